"""MLServer runtime that serves one ONNX file with onnxruntime on the CPU.

MLServer 1.7 has no ONNX runtime of its own, so p2g's tests use this one (start_mlserver.py
points every model-settings.json at `mlserver_onnx.runtime.OnnxRuntime`). It speaks plain
KServe V2 tensors: each request input is decoded to the model input of the same name (or of
the same position, so clients need not know ONNX's names), each model output comes back flat.
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor
from mlserver.utils import get_model_uri

# ONNX element types this runtime converts to; others are refused when loading.
_ONNX_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
_ONNX_TO_V2 = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
}


def _meta(node) -> MetadataTensor:
    # Symbolic or unknown ONNX dimensions are -1, as KServe V2 metadata writes them.
    shape = [d if isinstance(d, int) else -1 for d in node.shape]
    return MetadataTensor(name=node.name, datatype=_ONNX_TO_V2.get(node.type, "BYTES"), shape=shape)


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self.settings)
        extra = (self.settings.parameters.extra or {}) if self.settings.parameters else {}
        opts = ort.SessionOptions()
        # The tests share two cores with cargo; one thread per session keeps timings steady.
        opts.intra_op_num_threads = int(extra.get("intra_op_threads", 1))
        opts.inter_op_num_threads = 1
        # PP-OCR exports trip a harmless shape-merge warning on every load.
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self._inputs = self._session.get_inputs()
        # Publish the real tensors so GET /v2/models/<name> tells clients the names to use.
        self.inputs = [_meta(i) for i in self._inputs]
        self.outputs = [_meta(o) for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if len(payload.inputs) != len(self._inputs):
            raise InferenceError(
                f"model {self.name} takes {len(self._inputs)} input(s) "
                f"{[i.name for i in self._inputs]}, got {len(payload.inputs)}"
            )
        by_name = {i.name: i for i in self._inputs}
        names_match = all(t.name in by_name for t in payload.inputs)
        feeds = {}
        for pos, tensor in enumerate(payload.inputs):
            node = by_name[tensor.name] if names_match else self._inputs[pos]
            try:
                array = NumpyCodec.decode_input(tensor)
            except Exception as e:  # data length vs shape, unknown datatype...
                raise InferenceError(f"input {tensor.name}: cannot decode: {e}") from e
            feeds[node.name] = array.astype(_ONNX_TO_NUMPY.get(node.type, array.dtype), copy=False)
        try:
            results = self._session.run(None, feeds)
        except Exception as e:  # onnxruntime's wrong rank / dimension errors
            raise InferenceError(f"model {self.name}: {e}") from e
        outputs = [
            NumpyCodec.encode_output(o.name, np.ascontiguousarray(r))
            for o, r in zip(self._session.get_outputs(), results)
        ]
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=outputs)
