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

from pathlib import Path

from lookalike.evaluate.suite import EvalSuite, gallery_suite, toy_suite


class ToyJudge:
    """The toy scorer on the toy suite (`toy.metrics.make_suite` plus the empty prompt)."""

    name = "toy scorer"

    def __init__(self, cfg, scorer=None):
        from lookalike.toy.scorer import Scorer

        self.toy, self.suite = toy_suite(cfg)
        self.main = cfg.dataset.trigger
        self.second = cfg.dataset.people[0].trigger if cfg.dataset.people else None  # drawn as Grace
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
            out["people"] = {self.second: {"likeness": out["likeness_grace"], "both": out["likeness_both"],
                                               "elsewhere": out["grace_elsewhere"]}}
        return out

    def preservation(self, base_images: dict, base_readings: dict, images: dict, readings: dict) -> dict:
        """LoRA on vs off on the prompts without the trigger: `toy.metrics.preservation`."""
        from lookalike.toy.metrics import preservation

        return preservation(base_readings["plain"], readings["plain"], base_images["plain"], images["plain"])

    @staticmethod
    def headline(metrics: dict, kept: dict | None) -> dict:
        return {**people_headline(metrics, metrics["arthur_elsewhere"]), "leakage": metrics["leakage"],
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
        return {"judge": self.name, "main": self.main, "preservation": "attribute agreement (background; per place: someone there, "
                "who (stranger, Arthur, Grace), glasses, hair), LoRA on vs off"}


class FaceJudge:
    """dlib face embeddings against the person's photos (the held-out ones, when there are enough), on the
    gallery suite of `cfg.eval`. With dataset.people, every face is also judged against each other person
    (their own photos and threshold) and each is reported: likeness on their gallery, both drawn on prompts
    naming two, and confusion (one drawn where another was asked for)."""

    name = "dlib faces"

    def __init__(self, cfg, person, others=()):
        from lookalike.evaluate.suite import asked

        self.suite: EvalSuite = gallery_suite(cfg)
        self.person = person  # evaluate.faces.PersonModel
        self.others = tuple(others)  # a PersonModel for each of dataset.people, in order
        self.triggers = [p.trigger for p in cfg.dataset.everyone()][:1 + len(self.others)]
        self.asked = {g: asked(cfg, g) for g in ("trigger", "second", "both")} if self.others else {}
        self.side, self.min_score = cfg.doctor.face_side, cfg.doctor.min_face_score

    @classmethod
    def from_run(cls, cfg, run) -> "FaceJudge":
        """Each person from their training photos, anchored on their reference photo when it is set
        (caption.reference; dataset.people[i].reference); the photos the cache held out (dataset.holdout)
        are marked, so generated faces are judged against them."""
        from lookalike.ingest.doctor import resolve_reference

        people = []
        for k, p in enumerate(cfg.dataset.everyone()):
            ref = resolve_reference(cfg) if k == 0 else (Path(p.reference).expanduser() if p.reference else None)
            people.append(_person(cfg, run, k, ref))
        return cls(cfg, people[0], people[1:])

    def read(self, images) -> list:
        from lookalike.evaluate.faces import read_faces

        return [read_faces(im, self.person, self.side, self.min_score, others=self.others) for im in images]

    def metrics(self, readings: dict) -> dict:
        """One model's numbers from {group: readings}, each group also as `faces.set_metrics`."""
        from lookalike.evaluate.faces import copy_metrics, found_share, leakage, likeness, set_metrics

        leak, others = leakage(readings.get("group", []))
        out = {"likeness": found_share(readings["trigger"], 0), "leakage": leak, "leakage_others": others,
               "person_elsewhere": likeness(readings.get("plain", [])), "empty": likeness(readings.get("empty", []))}
        out.update(copy_metrics(readings["trigger"], self.person))
        if self.others:
            out.update(self._people_metrics(readings))
        out.update({f"{g}_faces": set_metrics(r) for g, r in readings.items()})
        return out

    def _people_metrics(self, readings: dict) -> dict:
        """Per other person (by trigger): likeness on their gallery prompts, both found on the pair prompts
        with the main person, and found in prompts without them; confusion over every one-person prompt."""
        from lookalike.evaluate.faces import all_found, confusion, found_share

        second, both = readings.get("second", []), readings.get("both", [])
        people = {}
        for k, trigger in enumerate(self.triggers[1:], start=1):
            mine = [r for r, w in zip(second, self.asked["second"], strict=True) if w == (k,)]
            pairs = [r for r, w in zip(both, self.asked["both"], strict=True) if k in w]
            people[trigger] = {"likeness": found_share(mine, k), "both": all_found(pairs, [(0, k)] * len(pairs)),
                               "elsewhere": found_share([*readings.get("plain", []), *readings.get("group", [])], k)}
        alone = [*readings["trigger"], *second]
        return {"people": people, "likeness_both": all_found(both, self.asked["both"]),
                "confusion": confusion(alone, [w[0] for w in (*self.asked["trigger"], *self.asked["second"])])}

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
        return {**people_headline(metrics, metrics["person_elsewhere"]), "leakage": metrics["leakage"],
                "preservation": kept["agreement"] if kept else None, "copy": metrics.get("copy")}

    @staticmethod
    def found(reading) -> bool:
        return reading.found

    def people(self, reading) -> list[dict]:
        """Each face found: its box, whether it is the person, 1 - its distance to them, and who it is (a
        learned person's trigger, or None)."""
        who = reading.who()
        return [{"where": list(f.face.box), "is_person": f.is_person, "score": round(1 - f.distance, 4),
                 "who": None if k is None else self.triggers[k]} for f, k in zip(reading.faces, who)]

    def about(self) -> dict:
        out = {"judge": self.name, "main": self.triggers[0], "person": self.person.to_json(),
               "preservation": "mean of face-count and person-or-not agreement, LoRA on vs off"}
        if self.others:
            out["people"] = {t: p.to_json() for t, p in zip(self.triggers[1:], self.others)}
        return out


def people_headline(metrics: dict, elsewhere: float | None) -> dict:
    """Likeness and elsewhere of the headline, from the main person's (`metrics["likeness"]`, `elsewhere`)
    and, with several people learned (`metrics["people"]`), the worst over everyone: likeness the lowest, and
    elsewhere the most any of them is drawn where not asked for (prompts without them, or another person's
    prompts: confusion)."""
    people = metrics.get("people", {}).values()
    return {"likeness": _worst(min, [metrics["likeness"], *(p["likeness"] for p in people)]),
            "elsewhere": _worst(max, [elsewhere, *(p["elsewhere"] for p in people), metrics.get("confusion")])}


def _worst(pick, values):
    """`pick` (min or max) of the values that were counted (None: nothing to count), or None."""
    values = [v for v in values if v is not None]
    return pick(values) if values else None


def _person(cfg, run, k: int, reference):
    """Person k (`DatasetConfig.everyone` order) from their training photos, held-out photos marked."""
    from lookalike.evaluate.faces import identity_from_photos, with_held_out
    from lookalike.evaluate.suite import held_out_photos, training_photos
    from lookalike.ingest.doctor import reference_face

    person = cfg.dataset.everyone()[k]
    setting = "caption.reference" if k == 0 else cfg.dataset.setting(k, "reference")
    anchor = reference_face(reference, cfg, setting=setting, who=person.trigger).embedding if reference else None
    photos = [p for p, _ in training_photos(cfg, run, k)]
    model = identity_from_photos(photos, reference=anchor, side=cfg.doctor.face_side,
                                 min_score=cfg.doctor.min_face_score, same_person=cfg.doctor.face_distance,
                                 where=f"{person.photos} ({cfg.dataset.setting(k, 'photos')})")
    return with_held_out(model, [p.name for p in held_out_photos(run, person.trigger)])


def make_judge(cfg, run):
    """The toy scorer for `model.source: lookalike:toy`, dlib faces for every other model."""
    from lookalike.evaluate.suite import is_toy

    return ToyJudge(cfg) if is_toy(cfg) else FaceJudge.from_run(cfg, run)
