"""The toy world: scenes of people, a tiny pretrained FLUX, Arthur, and a scorer that counts.

    scenes.py    the scene generator and its captions (deterministic from a seed)
    model.py     the toy FLUX's architecture and in-memory tokenizers
    pretrain.py  how the shipped weights were made (`lookalike toy pretrain`)
    scorer.py    the toy world's face recogniser
    metrics.py   likeness, leakage, preservation, prompt following
    demo.py      `lookalike demo`: dataset, training, metrics
"""

from pathlib import Path

TOY_FOLDER = Path(__file__).parent / "flux"  # the pretrained FluxPipeline folder, fp16
