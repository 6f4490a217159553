"""The binary half of tinker 0.38's wire protocol, built from the SDK's own protobuf module.

The SDK sends `forward_backward` bodies as protobuf and accepts `SampleResponse` and
`ForwardBackwardOutput` results only as protobuf; everything else is JSON of its pydantic
types. These functions are the inverses of `tinker/proto/request_conv.py` (we read what it
writes) and `tinker/proto/response_conv.py` (we write what it reads).
"""

from __future__ import annotations

import numpy as np
from google.protobuf.message import DecodeError
from tinker import types
from tinker.proto import tinker_public_pb2 as pb
from tinker.types.topk_logprobs import TopkLogprobs

PROTO = "application/x-protobuf"
_NUMPY_OF = {pb.DTYPE_FLOAT32: np.float32, pb.DTYPE_INT64: np.int64, pb.DTYPE_INT32: np.int32}
_DTYPE_OF = {"float32": pb.DTYPE_FLOAT32, "int64": pb.DTYPE_INT64}
_STOP_REASON = {"stop": pb.STOP_REASON_STOP, "length": pb.STOP_REASON_LENGTH}


class UnsupportedInput(ValueError):
    """A request uses a feature the local backend does not serve; the message names it."""


class MalformedInput(ValueError):
    """A body that is not what the SDK sends (not protobuf, an unknown dtype, ...); says why."""


def parse_forward_backward(body: bytes) -> tuple[str, int, types.ForwardBackwardInput, bool]:
    """(model_id, seq_id, input, forward_only) from a protobuf ForwardBackwardRequest."""
    msg = pb.ForwardBackwardRequest()
    try:
        msg.ParseFromString(body)
    except DecodeError as exc:
        raise MalformedInput(f"the forward_backward body is not a protobuf "
                             f"ForwardBackwardRequest ({exc})") from None
    if not msg.model_id:
        raise MalformedInput("the forward_backward body names no model_id")
    config: dict[str, float | str] = {k: v for k, v in msg.loss_fn_config.items()}
    for key, value in msg.loss_fn_config_v2.items():  # v2 wins: it can carry strings
        config[key] = value.text if value.WhichOneof("value") == "text" else value.number
    data = [_datum(d) for d in msg.data]
    fwd = types.ForwardBackwardInput(data=data, loss_fn=msg.loss_fn,
                                     loss_fn_config=config or None)
    return msg.model_id, msg.seq_id, fwd, msg.forward_only


def _datum(msg: pb.Datum) -> types.Datum:
    chunks = []
    for chunk in msg.model_input:
        kind = chunk.WhichOneof("chunk")
        if kind != "encoded_text":
            raise UnsupportedInput(f"model_input chunks of type {kind!r} (images, audio) are not "
                                   "served by the local backend: its models are text-only")
        tokens = _array(chunk.encoded_text.tokens, np.int32, "model_input tokens")
        chunks.append(types.EncodedTextChunk(tokens=tokens.tolist()))
    if len(msg.model_input_spans) or len(msg.loss_fn_input_spans):
        raise UnsupportedInput("provenance spans (stability info) are not served by the "
                               "local backend")
    inputs = {name: _tensor(name, t) for name, t in msg.loss_fn_inputs.items()}
    return types.Datum(model_input=types.ModelInput(chunks=chunks), loss_fn_inputs=inputs)


def _tensor(name: str, msg: pb.Tensor) -> types.TensorData:
    if msg.HasField("sparse_csr"):
        raise UnsupportedInput("sparse loss_fn_inputs are not served by the local backend")
    if msg.dtype not in _NUMPY_OF:
        raise MalformedInput(f"loss_fn input {name!r} has dtype {msg.dtype}; the SDK sends "
                             "float32, int64 or int32 tensors")
    array = _array(msg.dense, _NUMPY_OF[msg.dtype], f"loss_fn input {name!r}").copy()
    shape = list(msg.shape) or [array.size]
    if int(np.prod(shape)) != array.size:
        raise MalformedInput(f"loss_fn input {name!r} has {array.size} values, not the "
                             f"{int(np.prod(shape))} its shape {shape} needs")
    dtype = "float32" if msg.dtype == pb.DTYPE_FLOAT32 else "int64"
    return types.TensorData.from_numpy(array.reshape(shape).astype(dtype))


def _array(data: bytes, dtype: type[np.generic], what: str) -> np.ndarray:
    if len(data) % np.dtype(dtype).itemsize:
        raise MalformedInput(f"{what}: {len(data)} bytes is not a whole number of "
                             f"{np.dtype(dtype).name} values")
    return np.frombuffer(data, dtype=dtype)


def forward_backward_output(output: types.ForwardBackwardOutput) -> bytes:
    """One ArrayRecord with each field's per-datum arrays concatenated (int64 byte offsets)."""
    msg = pb.ForwardBackwardOutput(loss_fn_output_type=output.loss_fn_output_type)
    msg.metrics.update(output.metrics)
    if output.loss_fn_outputs:
        record = msg.loss_fn_outputs.add(num_datums=len(output.loss_fn_outputs))
        for name in output.loss_fn_outputs[0]:
            arrays = [np.ascontiguousarray(o[name].to_numpy()) for o in output.loss_fn_outputs]
            dtype = "int64" if arrays[0].dtype.kind in "iu" else "float32"
            arrays = [a.astype(dtype) for a in arrays]
            ends = np.cumsum([0, *(a.nbytes for a in arrays)]).astype(np.int64)
            record.fields[name].CopyFrom(pb.BatchedTensor(
                data=b"".join(a.tobytes() for a in arrays), offsets=ends.tobytes(),
                dtype=_DTYPE_OF[dtype], trailing_shape=list(arrays[0].shape[1:])))
    return msg.SerializeToString()


def sample_response(response: types.SampleResponse) -> bytes:
    msg = pb.SampleResponse()
    for seq in response.sequences:
        out = msg.sequences.add(stop_reason=_STOP_REASON[seq.stop_reason],
                                tokens=np.asarray(seq.tokens_np, dtype=np.int32).tobytes())
        if seq.logprobs_np is not None:
            out.logprobs = np.asarray(seq.logprobs_np, dtype=np.float32).tobytes()
        if seq.topk_logprobs_np is not None:
            _topk(out.topk_sampled_logprobs, seq.topk_logprobs_np)
    if response.prompt_logprobs_np is not None:  # NaN where a position has none (the first)
        msg.prompt_logprobs = np.asarray(response.prompt_logprobs_np, np.float32).tobytes()
    if response.topk_prompt_logprobs_np is not None:
        _topk(msg.topk_prompt_logprobs, response.topk_prompt_logprobs_np)
    return msg.SerializeToString()


def _topk(msg: pb.TopkLogprobs, topk: TopkLogprobs) -> None:
    """(positions, k) arrays; positions without values carry the SDK's sentinel (0, -99999)."""
    length, k = topk.token_ids.shape
    msg.token_ids = np.asarray(topk.token_ids, dtype=np.int32).tobytes()
    msg.logprobs = np.asarray(topk.logprobs, dtype=np.float32).tobytes()
    msg.k, msg.length = k, length
