"""Faces with dlib: HOG detection, 5-point alignment and 128-d identity embeddings.

The weights come from the `face-recognition-models` package, found by path: importing it needs
`pkg_resources`, which recent setuptools no longer ships. Two faces whose embeddings are closer than
0.6 (dlib's threshold) are usually the same person.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lookalike.errors import LookalikeError

SHAPE_MODEL = "shape_predictor_5_face_landmarks.dat"
EMBED_MODEL = "dlib_face_recognition_resnet_model_v1.dat"


@dataclass(frozen=True)
class Face:
    """One detected face: its box in the photo's pixels, the detector's score, its identity embedding."""

    box: tuple[int, int, int, int]  # left, top, right, bottom
    score: float
    embedding: np.ndarray  # (128,) float64

    @property
    def area(self) -> int:
        left, top, right, bottom = self.box
        return max(0, right - left) * max(0, bottom - top)

    @property
    def centre_x(self) -> float:
        return (self.box[0] + self.box[2]) / 2


def model_file(name: str) -> Path:
    """Path of one of face-recognition-models' weight files, without importing that package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise LookalikeError(
            "face detection needs the face-recognition-models package (dlib's weights); "
            "install lookalike's dependencies again: pip install -e ."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise LookalikeError(f"face-recognition-models has no {name} at {path}; reinstall it: pip install --force-reinstall face-recognition-models")
    return path


@functools.lru_cache(maxsize=1)
def _models():
    """dlib's HOG detector, shape predictor and ResNet embedder, loaded once (about 1 s)."""
    try:
        import dlib
    except ImportError:
        raise LookalikeError("face detection needs dlib: pip install dlib-bin") from None
    return (
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(str(model_file(SHAPE_MODEL))),
        dlib.face_recognition_model_v1(str(model_file(EMBED_MODEL))),
    )


def find_faces(image, side: int = 1024, min_score: float = 0.5, upsample: int = 1) -> list[Face]:
    """The faces in a PIL RGB `image`, largest first, boxes in the image's own pixels.

    The image is scaled so its long side is at most `side` (detection cost grows with pixels) and
    upsampled `upsample` times inside the detector (faces under ~80 px are missed otherwise).
    Detections scoring under `min_score` are dropped: HOG fires weakly on face-like patterns
    (scikit-image's astronaut has a mission patch at 0.12 beside her face at 1.2).
    """
    detector, shaper, embedder = _models()
    scale = min(1.0, side / max(image.size))
    small = image if scale == 1.0 else image.resize((round(image.width * scale), round(image.height * scale)))
    pixels = np.ascontiguousarray(np.asarray(small.convert("RGB")))
    rects, scores, _ = detector.run(pixels, upsample, 0.0)
    faces = []
    for rect, score in zip(rects, scores):
        if score < min_score:
            continue
        shape = shaper(pixels, rect)
        embedding = np.asarray(embedder.compute_face_descriptor(pixels, shape), dtype=np.float64)
        box = tuple(int(round(v / scale)) for v in (rect.left(), rect.top(), rect.right(), rect.bottom()))
        faces.append(Face(box, float(score), embedding))
    return sorted(faces, key=lambda f: -f.area)


def face_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance of two (128,) embeddings: under ~0.6 is usually the same person."""
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))


def frame_position(face: Face, width: int) -> str:
    """Where a face sits across the frame: left, center or right (thirds of the width)."""
    x = face.centre_x / width
    return "left" if x < 1 / 3 else "right" if x > 2 / 3 else "center"
