"""Triton Python-backend model "arssr": a whole volume in, the super-resolved volume out.

Copied by ``arssr-rt export-triton`` to ``<repo>/arssr/1/model.py``. It runs the arssr-rt
pipeline (normalise, encoder tiles with an exact halo, separable trilinear sampling, decoder
chunks, restore intensities) with a backend whose encode/decode are BLS requests to the
``arssr_encoder`` and ``arssr_decoder`` models in the same server, so the networks run on
Triton's ONNX Runtime / TensorRT backends and their GPU instances.

Needs arssr-rt in the Python backend's environment, the same version that wrote this file:
``arssr-rt export-triton --wheel`` copies a wheel to ``<repo>/arssr/wheels/`` for
``pip install /models/arssr/wheels/*.whl`` in the server (numpy + nibabel only are used on
this path; torch is never imported). Without it the model fails to load with that advice.

Every network call stays inside the TensorRT shape profiles of the exported configs:
encoder tiles of at most config parameter ``tile`` (plus halo), decoder calls of at most
``chunk`` points. Every failure of a request (bad input or not) becomes that request's error
response, one line; the other requests of the batch are served.

The decoder's ``coords`` follow the bundle's coordinate mode (config parameter ``coords`` =
model.json ``spec.coords``: "global" or "phase"); an installed arssr-rt that does not know the
mode, or a model.json that disagrees with the config, stops the model at load instead of
serving wrong intensities.

Inputs: ``volume`` FP32 (X, Y, Z), ``affine`` FP64 (4, 4), ``out_shape`` INT32 (3).
Outputs: ``output`` FP32 (out_shape), ``output_affine`` FP64 (4, 4).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

try:
    from arssr_rt.backends.base import BackendOptions, BackendRunner
    from arssr_rt.bundle import ModelBundle, load_bundle
    from arssr_rt.errors import ArssrError
    from arssr_rt.geometry import plan_output_grid
    from arssr_rt.pipeline import VolumeEngine
    from arssr_rt.validation import check_affine, check_voxels
    from arssr_rt.volume import Volume
except ImportError as exc:  # Triton would show a bare traceback; say what to install
    raise pb_utils.TritonModelException(
        f"arssr-rt is not usable in this Python backend ({exc}); install the wheel exported with the repository: "
        "pip install /models/arssr/wheels/*.whl (arssr-rt export-triton --wheel, see docs/batch.md)"
    ) from exc

ENCODER_MODEL = "arssr_encoder"
DECODER_MODEL = "arssr_decoder"


class TritonBLSBackend(BackendRunner):
    """The arssr-rt backend runner answered by BLS calls to the two network models."""

    name = "triton-bls"

    def __init__(self, io_dtype: np.dtype, feature_dim: int, max_points: int):
        self.io_dtype = io_dtype
        self.feature_dim = feature_dim
        self.max_decode_points = max_points  # the decoder's TensorRT profile ends here

    @staticmethod
    def _call(model: str, inputs: list, output: str) -> np.ndarray:
        request = pb_utils.InferenceRequest(model_name=model, requested_output_names=[output], inputs=inputs)
        response = request.exec()
        if response.has_error():
            raise pb_utils.TritonModelException(f"{model}: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, output).as_numpy()

    def _encode_impl(self, lr: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(lr, dtype=self.io_dtype)[None, None]
        features = self._call(ENCODER_MODEL, [pb_utils.Tensor("lr", x)], "features")
        return np.asarray(features[0], dtype=np.float32)

    def _decode_impl(self, features: np.ndarray, coords: np.ndarray) -> np.ndarray:
        inputs = [
            pb_utils.Tensor("features", np.ascontiguousarray(features, dtype=self.io_dtype)),
            pb_utils.Tensor("coords", np.ascontiguousarray(coords, dtype=self.io_dtype)),
        ]
        return np.asarray(self._call(DECODER_MODEL, inputs, "intensity"), dtype=np.float32).reshape(-1)


def check_coords_mode(configured: str, bundle: ModelBundle) -> None:
    """Refuse to serve unless the config, the bundle and the installed arssr-rt agree on the mode."""
    from arssr_rt.sampling import COORD_MODES

    declared = str(bundle.meta.get("spec", {}).get("coords", "global"))
    if configured != declared:
        raise pb_utils.TritonModelException(f"config.pbtxt says coords {configured!r} but bundle/model.json says {declared!r}; re-export the repository")
    if configured not in COORD_MODES:
        raise pb_utils.TritonModelException(f"the installed arssr-rt does not know decoder coordinate mode {configured!r}; pip install -U arssr-rt")


def error_line(exc: BaseException) -> str:
    """One line for the client: an ArssrError says what to fix; anything else names its type."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, ArssrError) else f"arssr: internal error: {type(exc).__name__}: {text}"


def _input(request, name: str) -> np.ndarray:
    """A named input tensor; Triton gives None for one the client did not send."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise ArssrError(f"missing input {name!r}; send volume (X,Y,Z) FP32, affine (4,4) FP64, out_shape (3) INT32")
    return tensor.as_numpy()


class TritonPythonModel:
    """Triton's entry points: initialize once per instance, execute per batch of requests."""

    def initialize(self, args: dict) -> None:
        model_dir = Path(args["model_repository"]) / str(args["model_version"])
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        io_dtype = np.dtype(np.float16 if parameters.get("precision") == "fp16" else np.float32)
        chunk = int(parameters.get("chunk", 1 << 17))
        tile = int(parameters["tile"]) if "tile" in parameters else None  # repositories from before profiles: none
        try:  # the same model.json checks as any bundle (schema, spec, radius, normalisation); its
            # weights live in the arssr_encoder / arssr_decoder models, so files is empty here
            bundle = load_bundle(model_dir / "bundle", verify=False)
        except ArssrError as exc:
            raise pb_utils.TritonModelException(f"arssr: {' '.join(str(exc).split())}; re-export the repository") from None
        check_coords_mode(parameters.get("coords", "global"), bundle)
        self.upsampler = VolumeEngine(
            bundle, backend=TritonBLSBackend(io_dtype, bundle.feature_dim, chunk), options=BackendOptions(), tile=tile,
            chunk=chunk, normalization=parameters.get("normalization", "minmax"),
        )

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                volume = _input(request, "volume").astype(np.float32)
                affine = _input(request, "affine").astype(np.float64)
                out_shape = [int(n) for n in _input(request, "out_shape").reshape(-1)]
                if volume.ndim != 3 or affine.shape != (4, 4) or len(out_shape) != 3 or min(out_shape) < 1:
                    raise ArssrError(f"need volume (X,Y,Z), affine (4,4), out_shape (3), got {volume.shape}, {affine.shape}, {out_shape}")
                check_voxels("volume", volume)
                check_affine("affine", affine)
                grid = plan_output_grid(volume.shape, affine, shape=out_shape)
                result = self.upsampler.run(Volume(data=volume, affine=affine), grid)
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("output", result.astype(np.float32)),
                    pb_utils.Tensor("output_affine", np.asarray(grid.affine, dtype=np.float64)),
                ]))
            except Exception as exc:  # noqa: BLE001 - one bad request must not fail the batch or the server
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(error_line(exc))))
        return responses

    def finalize(self) -> None:
        self.upsampler.close()
