"""The responses of Triton's ``ModelStreamInfer``: flags and error reporting as Triton's clients read them.

Every Surge model answers a request with exactly one response (Triton calls such models non-decoupled), so
every stream response is its request's last: it carries Triton's ``triton_final_response`` parameter set to
true, as Triton sets it, and clients that wait for the flag (tritonclient streaming loops, perf_analyzer)
complete the request on it. Triton sends an *empty* final response only for decoupled models, whose last
response may carry no data; a request's ``triton_enable_empty_final_response`` therefore changes nothing here.

A failed request's ``error_message`` is the plain message, as Triton writes it (a stream response has no
status of its own); Surge adds the status name (``INVALID_ARGUMENT``, ``NOT_FOUND``, ...) as the string
parameter ``surge_status_code`` of the response's ``infer_response``, beside its id, model and version.
"""

from __future__ import annotations

from surge.protos import grpc_service_pb2 as pb

__all__ = ["FINAL_PARAMETER", "FINAL_RESPONSE", "STATUS_CODE", "failure"]

#: Triton's response parameter: true on the last response of a request.
FINAL_RESPONSE = "triton_final_response"
#: ``parameters[FINAL_RESPONSE] = true`` as serialised ModelInferResponse bytes (``codec.encode_header`` adds it).
FINAL_PARAMETER = pb.ModelInferResponse(parameters={FINAL_RESPONSE: pb.InferParameter(bool_param=True)}).SerializeToString()
#: The status name of a failed stream request (Surge's; a stream response has no gRPC status of its own).
STATUS_CODE = "surge_status_code"


def failure(code_name: str, message: str, request: pb.ModelInferRequest | None = None) -> pb.ModelStreamInferResponse:
    """The stream response for a failed request: the plain message, the status name as a parameter, the
    request's id, model and version when it could be read, and the final flag."""
    failed = pb.ModelInferResponse()
    if request is not None:
        failed.model_name, failed.model_version, failed.id = request.model_name, request.model_version, request.id
    failed.parameters[FINAL_RESPONSE].bool_param = True
    failed.parameters[STATUS_CODE].string_param = code_name
    return pb.ModelStreamInferResponse(error_message=message, infer_response=failed)
