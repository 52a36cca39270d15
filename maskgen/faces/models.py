"""Where the dlib model files come from: the `face_recognition_models` package, or a file
named by an environment variable (for a retrained or otherwise different model)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# model name -> (environment variable that overrides it, file inside face_recognition_models)
MODELS = {
    "landmarks68": ("MASKGEN_LANDMARKS68", "shape_predictor_68_face_landmarks.dat"),
    "landmarks5": ("MASKGEN_LANDMARKS5", "shape_predictor_5_face_landmarks.dat"),
    "mmod": ("MASKGEN_MMOD", "mmod_human_face_detector.dat"),
    "resnet": ("MASKGEN_RESNET", "dlib_face_recognition_resnet_model_v1.dat"),
}


class ModelNotFound(FileNotFoundError):
    """A dlib model file is missing; the message says how to get or point at it."""


def model_path(name: str, override: str | Path | None = None) -> Path:
    """The file of model `name`: `override`, else $MASKGEN_<NAME>, else the packaged one."""
    env_var, filename = MODELS[name]
    chosen = override or os.environ.get(env_var)
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_file():
            raise ModelNotFound(f"model file {path} does not exist (from {'option' if override else env_var})")
        return path
    # Located without importing the package: its __init__ needs pkg_resources, which
    # recent setuptools no longer ships.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"{filename} ships with the face_recognition_models package: pip install face_recognition_models, "
            f"or set {env_var} to the file"
        )
    return Path(spec.submodule_search_locations[0]) / "models" / filename
