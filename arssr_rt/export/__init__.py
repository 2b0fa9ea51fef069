"""torch -> model bundle: ONNX export, validation against torch, checkpoint import.

Everything here except ``contract`` needs the ``export`` extra (torch, onnx, onnxscript);
the runtime imports only ``contract``.
"""
