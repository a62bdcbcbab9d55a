"""An MLServer runtime for an ONNX model (MLServer ships none): ONNX Runtime on the CPU with one
intra-op and one inter-op thread, as Ferrite runs the model, so both sides spend one core per
model call. Every input is decoded as a NumPy array; each output the request names (all of
them when it names none) is returned as a tensor. A ZipMap output (one {class: probability}
map per row, as skl2onnx and onnxmltools export classifiers by default) becomes an FP32
[rows, classes] tensor, as Ferrite serves it.
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self._settings, wellknown_filenames=["model.onnx"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        wanted = [o.name for o in payload.outputs or []] or self._outputs
        results = self._session.run(wanted, feeds)
        outputs = []
        for name, value in zip(wanted, results):
            if isinstance(value, list):
                keys = sorted(value[0]) if value else []
                value = np.array([[row[k] for k in keys] for row in value], dtype=np.float32)
            outputs.append(NumpyCodec.encode_output(name, value))
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)
