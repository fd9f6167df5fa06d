"""The run config's schema: one pydantic model per stage, every field typed, defaulted and explained.

The defaults are the FLUX.1-dev recipe of the write-up. Later stages add their sections here;
the YAML reading, layering and error wording live in `loading.py`.
"""

import re
from typing import Annotated, Literal, Union

from annotated_types import Ge, Le
from pydantic import AfterValidator, AllowInfNan, BaseModel, ConfigDict, Field, Strict, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

DEFAULT_PRESET = "flux1-dev"
_OUR_ERROR = "lookalike"  # pydantic error type whose message is already written for the user
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?|mps"

# ---------------------------------------------------------------- value checks


def _multiple_of_16(value: int) -> int:
    """Refuse image sides FLUX cannot patchify, suggesting the nearest sides that work."""
    if value % 16 == 0:
        return value
    below = value - value % 16
    tries = " or ".join(str(v) for v in (below, below + 16) if v >= 16)
    raise PydanticCustomError(
        _OUR_ERROR,
        "must be a multiple of 16 (FLUX packs 2x2 latent patches after 8x VAE downsampling); "
        "try {tries}",
        {"tries": tries},
    )


def _check_device(value: str) -> str:
    """Accept the device names torch understands that lookalike supports."""
    if not re.fullmatch(DEVICE_PATTERN, value):
        raise PydanticCustomError(_OUR_ERROR, "expected auto, cpu, cuda, cuda:N (N a GPU index) or mps")
    return value


def _check_trigger(value: str) -> str:
    """Strip the trigger word and refuse one that is empty or spans lines."""
    value = value.strip()
    if not value:
        raise PydanticCustomError(_OUR_ERROR, "must not be empty: it names the person in every caption, e.g. Arthur")
    if "\n" in value or "\r" in value:
        raise PydanticCustomError(_OUR_ERROR, "must fit on one line: it is spliced into every caption")
    return value


# Strict numbers: "abc", true and 5.5 are not integers; an int is a fine float; inf and nan are not.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), AllowInfNan(False)]
Bool = Annotated[bool, Strict()]
Side = Annotated[int, Strict(), Ge(16), AfterValidator(_multiple_of_16)]
Seed = Annotated[int, Strict(), Ge(0)]
NonEmpty = Annotated[str, Field(min_length=1)]
Device = Annotated[str, AfterValidator(_check_device)]

def _check_targets(value: str | list[str]) -> str | list[str]:
    """A target set name (`seed`, `attention`, ...) is kept as a name: each model family says which modules
    it means (`lookalike.models.<family>`), and the family is known only once the model is. A list must be
    non-empty with no blank names."""
    if isinstance(value, str):
        from lookalike.models.family import target_set_names

        if value not in target_set_names():
            raise PydanticCustomError(
                _OUR_ERROR, "is neither a list of module names nor a target set; target sets: {names}",
                {"names": ", ".join(target_set_names())},
            )
        return value
    if not value or any(not v.strip() for v in value):
        raise PydanticCustomError(_OUR_ERROR, "must name at least one module, e.g. [to_q, to_k, to_v, to_out.0]")
    return value


Targets = Annotated[Union[str, list[str]], AfterValidator(_check_targets)]
Trigger = Annotated[str, AfterValidator(_check_trigger)]


# ---------------------------------------------------------------- schema


class _Section(BaseModel):
    """Shared settings: unknown keys are errors and assignments are validated too.

    Numbers are coerced to text for string fields, so `revision: 1234567` or `trigger: 42` work.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


class ModelConfig(_Section):
    """model: which FLUX weights to start from."""

    source: NonEmpty = Field(
        "black-forest-labs/FLUX.1-dev",
        description="hub id, local diffusers folder, single .safetensors file, or lookalike:tiny-twin",
    )
    components: str | None = Field(
        None,
        description="for a single-file source: hub id or diffusers folder with the VAE, text encoders, "
        "tokenizers and scheduler (default black-forest-labs/FLUX.1-dev)",
    )
    revision: str | None = Field(None, description="hub revision (branch, tag or commit); default the main branch")


class RuntimeConfig(_Section):
    """runtime: where and in what precision to run."""

    device: Device = Field("auto", description="auto, cpu, cuda, cuda:N or mps; auto picks CUDA, then MPS, then CPU")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="compute dtype; auto picks by device")
    seed: Int = Field(0, ge=0, description="random seed for data order, noise and LoRA initialisation")


class PersonConfig(_Section):
    """One more person the same LoRA learns (dataset.people): their own trigger word, photos and class phrase."""

    trigger: Trigger = Field(description="word that names this person in captions and prompts, e.g. Grace")
    photos: NonEmpty = Field(description="folder of this person's photos, captioned with their trigger")
    class_phrase: str | None = Field(
        None, description="what this person is in a caption's words ('a woman'): replaces their trigger for "
        "class-prior preservation and in grounding prompts, as dataset.class_phrase does for the main person",
    )
    reference: str | None = Field(
        None, description="a clear photo of this person's face (a file), sent to the caption model beside "
        "caption.reference so it can tell the people apart",
    )


class DatasetConfig(_Section):
    """dataset: the photos of the person and how they are prepared."""

    photos: str | None = Field(None, description="folder of the person's photos (30-50 works well)")
    trigger: Trigger = Field("Arthur", description="word that names the person in captions and prompts")
    resolution: Side = Field(
        1024, description="training size: side of the square crop, or of the square whose area the buckets match"
    )
    aspect: Literal["buckets", "square"] = Field(
        "buckets",
        description="buckets: crop each photo to the nearest of several aspect ratios of about resolution² pixels "
        "(keeps heads in 3:4 phone photos); square: centre crop to resolution² (the write-up)",
    )
    grounding: str | None = Field(
        None,
        description="folder of captioned photos of *other* people (captions without the trigger), trained on "
        "beside the person's photos so that prompts without the trigger keep drawing others (against "
        "'everyone looks like me')",
    )
    grounding_target: Literal["base", "photo"] = Field(
        "base",
        description="what the model learns from a grounding photo: base = the base model's own prediction for "
        "it (prior preservation: captions without the trigger keep drawing what they drew before); photo = the "
        "photo itself, like the person's photos",
    )
    class_phrase: str | None = Field(
        None, description="what the person is, in the words a caption would use without knowing them ('a man', "
        "'a woman', 'a boy'): replaces the trigger in each caption for class-prior preservation "
        "(train.class_prior_weight)",
    )
    missing_trigger: Literal["refuse", "warn"] = Field(
        "refuse", description="captions that do not contain the trigger word: refuse to train, or warn and go on"
    )
    max_sequence_length: Int = Field(512, ge=1, le=512, description="T5 tokens kept per training caption (at most 512)")
    holdout: Int = Field(0, ge=0, description="photos held out of training for the validation loss (0: none); "
                         "with dataset.people, this many of each person's photos")
    people: list[PersonConfig] = Field(
        [], description="more people the same LoRA learns, each with a trigger word, a photos folder and a class "
        "phrase; captions name every person in a photo by their trigger (several people in one LoRA)",
    )

    @field_validator("people")
    @classmethod
    def _distinct_triggers(cls, people: list[PersonConfig], info: ValidationInfo) -> list[PersonConfig]:
        words = [info.data.get("trigger", "")] + [p.trigger for p in people]
        for i, word in enumerate(words):
            if any(w.lower() == word.lower() for w in words[:i]):
                raise PydanticCustomError(_OUR_ERROR, "names '{word}' twice (with dataset.trigger or another "
                                          "person): give every person their own trigger word", {"word": word})
        return people

    @staticmethod
    def setting(k: int, key: str) -> str:
        """The config key of person k's `key` (`everyone()` order): dataset.photos for the main person,
        dataset.people[k-1].photos for the others."""
        return f"dataset.{key}" if k == 0 else f"dataset.people[{k - 1}].{key}"

    def everyone(self) -> list[PersonConfig]:
        """The main person (dataset.trigger, photos, class_phrase; their reference is caption.reference)
        first, then dataset.people."""
        main = PersonConfig.model_construct(trigger=self.trigger, photos=self.photos, class_phrase=self.class_phrase,
                                            reference=None)
        return [main, *self.people]


class GroundConfig(_Section):
    """ground: grounding images the base model draws of other people, for `lookalike ground` (and `fit`)."""

    count: Int = Field(
        0, ge=0, description="images the base model draws before training, from the person's captions with the "
        "trigger replaced by a class phrase, trained beside the photos like dataset.grounding (towards the base "
        "model's own prediction by default, dataset.grounding_target) against 'everyone looks like me'; 0: none",
    )
    phrases: list[NonEmpty] = Field(
        [], description="class phrases the drawn people get in turn, for variety ('a man', 'a woman', 'an old "
        "man'); empty: dataset.class_phrase alone",
    )


class LoraConfig(_Section):
    """lora: shape of the low-rank adapter trained on the transformer."""

    rank: Int = Field(32, gt=0, description="LoRA rank: width of the low-rank update")
    alpha: Float = Field(16.0, gt=0, description="LoRA alpha: the update is scaled by alpha / rank")
    targets: Targets = Field(
        ["to_q", "to_k", "to_v", "to_out.0"],  # the write-up's (FLUX.1-dev): the `seed` set of FLUX.1
        description="layers that get a LoRA: a list of module names, or a target set of the model's family: "
        "seed (the write-up's), attention, all-linear",
    )


class TrainConfig(_Section):
    """train: the optimisation recipe."""

    learning_rate: Float = Field(1e-4, gt=0, description="AdamW learning rate for the LoRA weights")
    weight_decay: Float = Field(1e-4, ge=0, description="AdamW weight decay")
    batch_size: Int = Field(8, ge=1, description="photos per optimiser step, before accumulation")
    gradient_accumulation: Int = Field(1, ge=1, description="batches summed into one optimiser step")
    gradient_checkpointing: Bool = Field(True, description="recompute activations in backward to save GPU memory")
    precision: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="dtype of the frozen base on a GPU")
    memory: Literal["balanced", "low", "lowest"] = Field(
        "balanced",
        description="how the frozen base's block weights are stored: balanced = in train.precision (fastest); "
        "low = int8 weight-only (about half the weight memory); lowest = 4-bit NF4 (about a quarter). The LoRA "
        "stays fp32 either way; measured costs in BENCHMARKS.md",
    )
    guidance: Float = Field(1.0, description="value fed to the guidance embedding during training (guidance-distilled "
                           "families: FLUX.1, FLUX.2 [dev]; refused for the others, which have no such embedding)")
    density: Literal["logit_normal", "uniform", "mode"] = Field(
        "logit_normal", description="distribution of the noise level sigma: logit_normal, uniform or mode"
    )
    logit_mean: Float = Field(0.0, description="mean of the logit-normal density (0 centres sigma on 0.5)")
    logit_std: Float = Field(1.0, ge=0, description="spread of the logit-normal density")
    mode_scale: Float = Field(1.29, description="shape of the mode density (SD3's default 1.29)")
    shift: Float = Field(1.0, gt=0, description="timestep shift s: sigma -> s*sigma/(1+(s-1)*sigma); >1 favours noise")
    weighting: Literal["none", "sigma_sqrt", "cosmap"] = Field(
        "none", description="loss weight w(sigma): none, sigma_sqrt or cosmap"
    )
    epochs: Int = Field(1000, ge=1, description="passes over the photos (the write-up's likeness settles after ~800)")
    max_steps: Int | None = Field(None, ge=1, description="stop after this many optimiser steps, even mid-epoch")
    warmup_steps: Int = Field(50, ge=0, description="steps of linear learning-rate warm-up from 0")
    schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant", description="learning rate after the warm-up: constant (the write-up), or cosine / linear decay "
        "to 0 at the last step"
    )
    max_grad_norm: Float = Field(1.0, ge=0, description="clip the LoRA gradients to this norm (0: no clipping)")
    grounding_weight: Float = Field(
        1.0, ge=0, description="loss weight of the grounding photos (dataset.grounding) against the person's photos"
    )
    class_prior_weight: Float = Field(
        0.0, ge=0, description="class-prior preservation: each photo's caption with the trigger replaced by "
        "dataset.class_phrase is trained, on the same noisy latent, towards what the base model (LoRA off) "
        "predicts for it, at this loss weight; 0: off. Against 'everyone looks like me' (ai-toolkit's "
        "Differential Output Preservation)",
    )
    blank_prior_weight: Float = Field(
        0.0, ge=0, description="blank-prompt preservation: the empty caption on each photo's noisy latent is "
        "trained towards the base model's prediction at this loss weight; 0: off",
    )
    ema_decay: Float = Field(
        0.0, ge=0, lt=1, description="keep an exponential moving average of the LoRA weights with this decay "
        "(0.99: about the last 100 steps) and use it for the snapshots, previews and exported LoRA (the last raw "
        "weights go to train/lora-raw.safetensors); 0: off",
    )
    caption_dropout: Float = Field(
        0.0, ge=0, le=1,
        description="probability of training a photo with the empty caption; > 0 makes the empty prompt draw "
        "the person less often (the write-up used 0)",
    )
    checkpoint_every: Int = Field(250, ge=1, description="steps between LoRA snapshots and the resumable checkpoint")
    sample_every: Int = Field(25, ge=1, description="epochs between preview images (the write-up: 25)")
    sample_prompts: list[str] = Field(
        ["{trigger} wearing a tuxedo", "{trigger} as a wizard"],
        description="preview prompts drawn with generate.seeds at every sample epoch; {trigger} is replaced",
    )
    validation_sigmas: list[Annotated[float, Strict(), Ge(0), Le(1)]] = Field(
        [0.1, 0.3, 0.5, 0.7, 0.9], min_length=1,
        description="noise levels of the fixed-noise validation loss logged every epoch",
    )
    strategy: Literal["auto", "ddp", "fsdp", "ddp_spawn"] = Field(
        "auto", description="Lightning strategy for several devices: auto, ddp, fsdp or ddp_spawn"
    )
    devices: Int = Field(1, ge=1, description="GPUs (or CPU processes) to train on")
    num_nodes: Int = Field(1, ge=1, description="machines to train on (with ddp or fsdp)")


class DoctorConfig(_Section):
    """doctor: what the dataset doctor of `lookalike ingest` flags."""

    near_duplicate_bits: Int = Field(
        6, ge=0, le=64, description="photos whose 64-bit perceptual hashes differ in at most this many bits are near duplicates"
    )
    min_sharpness: Float = Field(
        60.0, ge=0,
        description="variance of the Laplacian (on the face scaled to 64², else the sharpest tile) below which a "
        "photo is flagged blurry",
    )
    face_distance: Float = Field(
        0.6, gt=0, description="dlib face-embedding distance under which two faces are the same person (dlib's 0.6)"
    )
    face_side: Int = Field(1024, ge=128, description="long side, in pixels, a photo is scaled to for face detection")
    min_face_score: Float = Field(
        0.5, description="dlib HOG detection score under which a detection is not counted as a face"
    )


SEED_RULES = [
    "Always start the caption with \"{trigger}\"",
    "If other people are present, mention them but focus on {trigger}",
    "If glasses are missing or sunglasses are present, say so",
    "If the beard is gone, mention that too",
    "State where {trigger} is in the frame (left, center, right)",
]


class CaptionConfig(_Section):
    """caption: the vision-language model that captions each photo against a reference photo."""

    provider: Literal["xai", "openai", "gemini", "ollama", "vllm", "custom"] = Field(
        "xai", description="OpenAI-compatible endpoint preset: xai, openai, gemini, ollama, vllm, or custom (set base_url)"
    )
    base_url: str | None = Field(None, description="chat-completions base URL; default the provider's")
    model: str | None = Field(None, description="vision model name; default the provider's")
    api_key_env: str | None = Field(
        None, description="environment variable holding the API key (default the provider's, e.g. XAI_API_KEY); "
        "the key itself is never written anywhere",
    )
    reference: str | None = Field(
        None, description="reference photo of the person sent first with every photo: a file, or the name of a "
        "photo in dataset.photos",
    )
    rules: list[NonEmpty] = Field(SEED_RULES, min_length=1, description="captioning rules; {trigger} is replaced")
    image_side: Int = Field(768, ge=64, description="long side, in pixels, of the JPEG sent for each image")
    jpeg_quality: Int = Field(90, ge=30, le=100, description="JPEG quality of the images sent")
    detail: Literal["auto", "low", "high"] = Field("high", description="image detail requested from the model")
    concurrency: Int = Field(8, ge=1, description="requests in flight at once")
    timeout: Float = Field(60.0, gt=0, description="seconds to wait for one reply before retrying")
    retries: Int = Field(4, ge=0, description="retries of one request on 429, 5xx and timeouts (honouring Retry-After)")
    reasks: Int = Field(2, ge=0, description="times a caption that breaks a rule is asked for again, the violation stated")
    min_chars: Int = Field(20, ge=1, description="captions shorter than this are flagged")
    max_chars: Int = Field(400, ge=1, description="captions longer than this are flagged")
    max_tokens: Int = Field(300, ge=16, description="reply tokens allowed per request")
    temperature: Float = Field(0.2, ge=0, description="sampling temperature of the model")
    price_in: Float | None = Field(None, ge=0, description="USD per million input tokens, for --dry-run (default the provider's)")
    price_out: Float | None = Field(None, ge=0, description="USD per million output tokens, for --dry-run")


class LoraSpec(_Section):
    """One LoRA file applied at generation time."""

    path: NonEmpty = Field(description="LoRA .safetensors file to apply")
    weight: Float = Field(1.0, description="strength of this LoRA; negative values push away from it")
    name: str | None = Field(None, description="adapter name; default derived from the file name")


class GenerateConfig(_Section):
    """generate: the sampler settings for previews, the generate command and evaluation."""

    steps: Int = Field(28, ge=1, description="denoising steps")
    guidance: Float = Field(3.5, ge=0, description="the value fed to the guidance embedding when drawing, for "
                           "guidance-distilled families (FLUX.1, FLUX.2 [dev]); the others use generate.cfg")
    cfg: Float = Field(4.0, ge=1, description="classifier-free guidance scale w for families without a guidance "
                       "embedding (FLUX.2 [klein], Z-Image, Qwen-Image): v = v(negative) + w·(v(prompt) - v(negative)); "
                       "1 turns it off (one forward per step instead of two)")
    negative_prompt: str = Field("", description="what classifier-free guidance steers away from (families without "
                                 "a guidance embedding); default the empty prompt")
    width: Side = Field(1024, description="image width in pixels; a multiple of 16")
    height: Side = Field(1024, description="image height in pixels; a multiple of 16")
    seeds: list[Seed] = Field([0], min_length=1, description="one image per seed")
    max_sequence_length: Int = Field(512, ge=1, le=512, description="T5 prompt tokens kept (at most 512)")
    loras: list[LoraSpec] = Field([], description="LoRA files applied at generation time: path, weight, name")
    batch_size: Int = Field(1, ge=1, description="images per denoising call: faster, more memory; the same images "
                                                "up to float rounding")


GALLERY_PROMPTS = [
    "{trigger} wearing a tuxedo", "{trigger} as a wizard", "{trigger} as a boxer", "{trigger} as a 1920s gangster",
    "{trigger} as a gardener", "{trigger} at their graduation", "{trigger} as a superhero", "{trigger} petting a fox",
    "{trigger} as a hacker",
]


class EvalConfig(_Section):
    """eval: the fixed suite `lookalike eval` draws for every checkpoint, and what a recommended one must keep."""

    seeds: list[Seed] = Field([0, 1, 2, 3], min_length=1, description="seeds of every suite prompt (same for base and LoRA)")
    prompts: list[NonEmpty] = Field(
        GALLERY_PROMPTS, min_length=1, description="trigger prompts (the gallery); {trigger} is replaced"
    )
    group_prompts: list[NonEmpty] = Field(
        ["{trigger} with two friends at the beach", "{trigger} and a woman having dinner"],
        description="prompts with the person among others (leakage: are the others turned into the person?)",
    )
    pair_prompts: list[NonEmpty] = Field(
        ["{trigger} and {other} standing side by side in a park", "{trigger} and {other} having coffee at a cafe"],
        description="with dataset.people: prompts naming two learned people, the main one ({trigger}) and each "
        "other ({other}); are both drawn, each as themselves?",
    )
    plain_prompts: list[NonEmpty] = Field(
        ["a man in a tuxedo", "a woman reading in a park", "a cozy living room"],
        description="prompts without the trigger (preservation: LoRA on vs off); the empty prompt is always added",
    )
    toy_plain: Int = Field(10, ge=1, description="toy world: prompts without Arthur in the suite (toy.metrics.make_suite)")
    toy_trigger: Int = Field(10, ge=1, description="toy world: prompts with Arthur in the suite (60% alone, 40% with a friend)")
    min_likeness: Float = Field(
        0.3, ge=0, le=1, description="a recommended checkpoint draws the person in at least this share of trigger-prompt "
        "images; under it the run has not learned the person and nothing is recommended. 0.3 sits above chance (the "
        "base model and a LoRA that learned nothing: ~0; dlib's same-person threshold lets a few percent of strangers "
        "through; ±0.08 sampling error on the 36-image gallery) and below every run that learned (toy demo 0.80, "
        "weakest seed of a constant learning rate 0.45)",
    )
    max_leakage: Float = Field(
        0.2, ge=0, le=1, description="a recommended checkpoint turns at most this share of the others in group "
        "prompts into the person",
    )
    max_elsewhere: Float = Field(
        0.2, ge=0, le=1, description="a recommended checkpoint draws the person in at most this share of images of "
        "prompts without the trigger",
    )
    min_preservation: Float = Field(
        0.8, ge=0, le=1, description="a recommended checkpoint keeps at least this share of what prompts without the "
        "trigger drew before (toy: attribute agreement; faces: face-count and person-or-not agreement)",
    )
    max_copy: Float = Field(
        0.1, ge=0, description="with held-out photos (dataset.holdout >= 2): a recommended checkpoint's copy score "
        "(the drawn person's median face distance to the held-out photos minus that to the nearest training photo, "
        "above what the held-out photos themselves score) is at most this; over it, it draws copies of its training "
        "photos rather than the person. dlib distances: a near-copy of a photo is ~0.1 from it, another photo of "
        "the same person 0.3-0.5",
    )
    empty_seeds: Int = Field(16, ge=1, description="`lookalike experiment empty`: seeds drawn with the empty prompt")
    replay_seed: Seed = Field(0, description="`lookalike experiment replay`: the seed each training caption is redrawn with")

    @field_validator("pair_prompts")
    @classmethod
    def _name_both(cls, prompts: list[str]) -> list[str]:
        for prompt in prompts:
            if "{trigger}" not in prompt or "{other}" not in prompt:
                raise PydanticCustomError(_OUR_ERROR, "'{prompt}' must name both people: write {trigger} and "
                                          "{other} in it", {"prompt": prompt})
        return prompts


class Config(_Section):
    """The whole run config."""

    preset: str = Field(DEFAULT_PRESET, description="preset this config started from")
    model: ModelConfig = Field(default_factory=ModelConfig, description="which FLUX weights to start from")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="where and in what precision to run")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig, description="the photos and their preparation")
    ground: GroundConfig = Field(default_factory=GroundConfig, description="grounding images drawn by the base model")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="shape of the LoRA adapter")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the optimisation recipe")
    generate: GenerateConfig = Field(default_factory=GenerateConfig, description="the sampler settings")
    doctor: DoctorConfig = Field(default_factory=DoctorConfig, description="what the dataset doctor flags")
    caption: CaptionConfig = Field(default_factory=CaptionConfig, description="the captioning model and its rules")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="the evaluation suite and the recommendation's bounds")


    def as_person(self, k: int, main_reference: str | None = None) -> "Config":
        """This config seen from person k of `dataset.everyone()` (k = 0: itself): their trigger, photos, class
        phrase and reference become dataset.* and caption.reference, and everyone else dataset.people, the main
        person with `main_reference` (default caption.reference). How the dataset doctor and the caption stage
        see another person's folder (their records go to `RunDir.person`)."""
        if k == 0:
            return self
        person = self.dataset.people[k - 1]
        me = PersonConfig.model_construct(trigger=self.dataset.trigger, photos=self.dataset.photos,
                                          class_phrase=self.dataset.class_phrase,
                                          reference=main_reference if main_reference is not None else self.caption.reference)
        others = [me, *(p for i, p in enumerate(self.dataset.people) if i != k - 1)]
        dataset = self.dataset.model_copy(update={"trigger": person.trigger, "photos": person.photos,
                                                  "class_phrase": person.class_phrase, "people": others})
        return self.model_copy(update={"dataset": dataset,
                                       "caption": self.caption.model_copy(update={"reference": person.reference})})
