"""GPU runtime pieces: TensorRT engine build/cache/run and the CUDA trilinear sampler.

Modules (import them directly; this package imports neither tensorrt nor cuda):
- gpu_probe: is a usable CUDA GPU here? (always before any TensorRT object)
- cache: engine files keyed on {ONNX sha256, TensorRT version, GPU + SM, precision, profiles}
- builder: ONNX -> engine for TensorRT 10.x and 11.x, with a timing cache
- runner: run an engine with tensors bound by name
- device / device_decode: checked cuda.bindings calls; the two-stream sample -> decode loop
- sampler (+ sampler.cu): the CUDA kernel and its NVRTC compile (its numpy mirror is in tests/)
"""
