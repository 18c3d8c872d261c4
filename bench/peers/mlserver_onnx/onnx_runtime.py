"""An MLServer runtime for ONNX files, as MLServer's own runtimes are written: load a session, decode with
NumpyCodec, run, encode. One intra-op thread, like every target of the benchmark.

Runs inside MLServer's venv (``.cache/bench/mlserver-venv``), not Surge's: it imports only mlserver and
onnxruntime. ``parameters.uri`` in model-settings.json is the ONNX file's absolute path.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(self.settings.parameters.uri, options, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feed = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        results = self._session.run(self._outputs, feed)
        outputs = [NumpyCodec.encode_output(name, value) for name, value in zip(self._outputs, results)]
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)
