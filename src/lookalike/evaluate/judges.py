"""Judges: what reads generated images and turns readings into likeness, leakage and preservation.

Evaluation is the same for every model: draw a suite with the one sampler, read every image, compare
base and LoRA on the same prompts and seeds. Only the reader differs, so it is a small object passed in
(not a branch on the model):

    ToyJudge    the toy world's scorer (`lookalike.toy.scorer`) and metrics (`lookalike.toy.metrics`),
                numbers identical to `lookalike.toy.demo.evaluate_lora` on the same suite
    FaceJudge   dlib face embeddings against the person's own photos (`lookalike.evaluate.faces`)

Both give `headline(...)`: the four numbers a checkpoint is chosen by, each 0-1 or None when nothing
could be counted: likeness (person found, trigger prompts), leakage (others turned into the person,
prompts with several people), elsewhere (person found in prompts without the trigger) and
preservation (what prompts without the trigger drew before, kept with the LoRA on).
"""

from __future__ import annotations

from lookalike.evaluate.suite import EvalSuite, gallery_suite, toy_suite


class ToyJudge:
    """The toy scorer on the toy suite (`toy.metrics.make_suite` plus the empty prompt)."""

    name = "toy scorer"

    def __init__(self, cfg, scorer=None):
        from lookalike.toy.scorer import Scorer

        self.toy, self.suite = toy_suite(cfg)
        self.scorer = scorer or Scorer.load()

    def read(self, images) -> list:
        """One `toy.scorer.Reading` per PIL image."""
        return self.scorer.read(images) if images else []

    def metrics(self, readings: dict) -> dict:
        """One model's numbers from {group: readings}: `toy.metrics.model_metrics` plus the empty prompt's."""
        from lookalike.toy.metrics import likeness, model_metrics

        out = model_metrics(self.toy, readings["plain"], readings["trigger"], readings.get("second", ()),
                            readings.get("both", ()))
        out["empty"] = likeness(readings["empty"]) if readings.get("empty") else None
        if "confusion" in out:
            out["empty_grace"] = likeness(readings["empty"], "grace") if readings.get("empty") else None
        return out

    def preservation(self, base_images: dict, base_readings: dict, images: dict, readings: dict) -> dict:
        """LoRA on vs off on the prompts without the trigger: `toy.metrics.preservation`."""
        from lookalike.toy.metrics import preservation

        return preservation(base_readings["plain"], readings["plain"], base_images["plain"], images["plain"])

    @staticmethod
    def headline(metrics: dict, kept: dict | None) -> dict:
        """With two people learned: likeness is the worse of the two, and a person drawn where the other was
        asked for (confusion) counts as drawn elsewhere, beside either drawn in prompts without them."""
        likeness, elsewhere = metrics["likeness"], metrics["arthur_elsewhere"]
        if "confusion" in metrics:
            likeness = min(likeness, metrics["likeness_grace"])
            elsewhere = max(elsewhere, metrics["grace_elsewhere"], metrics["confusion"])
        return {"likeness": likeness, "leakage": metrics["leakage"], "elsewhere": elsewhere,
                "preservation": kept["agreement"] if kept else None,
                "copy": None}  # the scorer reads who is drawn, not how close to one photo

    @staticmethod
    def found(reading) -> bool:
        return bool(reading.arthurs)

    @staticmethod
    def people(reading) -> list[dict]:
        """Each person found: where, whether they are the (main) person, how sure (0-1), and who they are."""
        return [{"where": f.slot, "is_person": f.arthur, "score": f.p_arthur, "who": f.who} for f in reading.people]

    def about(self) -> dict:
        return {"judge": self.name, "preservation": "attribute agreement (background; per place: someone there, "
                "who (stranger, Arthur, Grace), glasses, hair), LoRA on vs off"}


class FaceJudge:
    """dlib face embeddings against the person's photos (the held-out ones, when there are enough), on the
    gallery suite of `cfg.eval`."""

    name = "dlib faces"

    def __init__(self, cfg, person):
        self.suite: EvalSuite = gallery_suite(cfg)
        self.person = person  # evaluate.faces.PersonModel
        self.side, self.min_score = cfg.doctor.face_side, cfg.doctor.min_face_score

    @classmethod
    def from_run(cls, cfg, run) -> "FaceJudge":
        """The person from the run's photos, anchored on caption.reference when it is set; the photos the cache
        held out (dataset.holdout) are marked, so generated faces are judged against them."""
        from lookalike.evaluate.faces import identity_from_photos, with_held_out
        from lookalike.evaluate.suite import held_out_photos, training_photos
        from lookalike.ingest.doctor import reference_face, resolve_reference

        ref = resolve_reference(cfg)
        anchor = reference_face(ref, cfg).embedding if ref is not None else None
        photos = [p for p, _ in training_photos(cfg, run)]
        person = identity_from_photos(photos, reference=anchor, side=cfg.doctor.face_side,
                                      min_score=cfg.doctor.min_face_score, same_person=cfg.doctor.face_distance,
                                      where=str(cfg.dataset.photos))
        return cls(cfg, with_held_out(person, [p.name for p in held_out_photos(run, cfg.dataset.trigger)]))

    def read(self, images) -> list:
        from lookalike.evaluate.faces import read_faces

        return [read_faces(im, self.person, self.side, self.min_score) for im in images]

    def metrics(self, readings: dict) -> dict:
        """One model's numbers from {group: readings}, each group also as `faces.set_metrics`."""
        from lookalike.evaluate.faces import copy_metrics, leakage, likeness, set_metrics

        leak, others = leakage(readings.get("group", []))
        out = {"likeness": likeness(readings["trigger"]), "leakage": leak, "leakage_others": others,
               "person_elsewhere": likeness(readings.get("plain", [])), "empty": likeness(readings.get("empty", []))}
        out.update(copy_metrics(readings["trigger"], self.person))
        out.update({f"{g}_faces": set_metrics(r) for g, r in readings.items()})
        return out

    def preservation(self, base_images: dict, base_readings: dict, images: dict, readings: dict) -> dict:
        """`faces.preservation` on the prompts without the trigger, plus `agreement`: the mean of its face-count
        and person-or-not agreements (the number the recommendation bounds)."""
        from lookalike.evaluate.faces import preservation

        kept = preservation(base_readings["plain"], readings["plain"], base_images["plain"], images["plain"])
        shares = [kept[k] for k in ("face_count_agreement", "person_agreement") if kept[k] is not None]
        kept["agreement"] = sum(shares) / len(shares) if shares else None
        return kept

    @staticmethod
    def headline(metrics: dict, kept: dict | None) -> dict:
        return {"likeness": metrics["likeness"], "leakage": metrics["leakage"],
                "elsewhere": metrics["person_elsewhere"], "preservation": kept["agreement"] if kept else None,
                "copy": metrics.get("copy")}

    @staticmethod
    def found(reading) -> bool:
        return reading.found

    @staticmethod
    def people(reading) -> list[dict]:
        """Each face found: its box, whether it is the person, and 1 - its distance to them."""
        return [{"where": list(f.face.box), "is_person": f.is_person, "score": round(1 - f.distance, 4)}
                for f in reading.faces]

    def about(self) -> dict:
        return {"judge": self.name, "person": self.person.to_json(),
                "preservation": "mean of face-count and person-or-not agreement, LoRA on vs off"}


def make_judge(cfg, run):
    """The toy scorer for `model.source: lookalike:toy`, dlib faces for every other model."""
    from lookalike.evaluate.suite import is_toy

    return ToyJudge(cfg) if is_toy(cfg) else FaceJudge.from_run(cfg, run)
