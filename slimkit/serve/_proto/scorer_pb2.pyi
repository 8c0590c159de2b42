from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Normalization(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NORMALIZATION_UNSPECIFIED: _ClassVar[Normalization]
    LABELS: _ClassVar[Normalization]
    VOCAB: _ClassVar[Normalization]
    LOGIT_DIFF: _ClassVar[Normalization]
NORMALIZATION_UNSPECIFIED: Normalization
LABELS: Normalization
VOCAB: Normalization
LOGIT_DIFF: Normalization

class ScoreRequest(_message.Message):
    __slots__ = ("query", "items", "labels", "label_token_ids", "normalization", "item_first")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LABEL_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIRST_FIELD_NUMBER: _ClassVar[int]
    query: str
    items: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.RepeatedScalarFieldContainer[str]
    label_token_ids: _containers.RepeatedScalarFieldContainer[int]
    normalization: Normalization
    item_first: bool
    def __init__(self, query: _Optional[str] = ..., items: _Optional[_Iterable[str]] = ..., labels: _Optional[_Iterable[str]] = ..., label_token_ids: _Optional[_Iterable[int]] = ..., normalization: _Optional[_Union[Normalization, str]] = ..., item_first: _Optional[bool] = ...) -> None: ...

class ItemScore(_message.Message):
    __slots__ = ("score", "label_logprobs")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LABEL_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    score: float
    label_logprobs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, score: _Optional[float] = ..., label_logprobs: _Optional[_Iterable[float]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("scores", "label_token_ids", "normalization", "shared_tokens", "item_tokens", "engine_seconds", "queue_seconds", "prefill_seconds", "scoring_seconds", "batch_requests", "tokens_saved")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    LABEL_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    SHARED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ITEM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SCORING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BATCH_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_SAVED_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[ItemScore]
    label_token_ids: _containers.RepeatedScalarFieldContainer[int]
    normalization: Normalization
    shared_tokens: int
    item_tokens: _containers.RepeatedScalarFieldContainer[int]
    engine_seconds: float
    queue_seconds: float
    prefill_seconds: float
    scoring_seconds: float
    batch_requests: int
    tokens_saved: int
    def __init__(self, scores: _Optional[_Iterable[_Union[ItemScore, _Mapping]]] = ..., label_token_ids: _Optional[_Iterable[int]] = ..., normalization: _Optional[_Union[Normalization, str]] = ..., shared_tokens: _Optional[int] = ..., item_tokens: _Optional[_Iterable[int]] = ..., engine_seconds: _Optional[float] = ..., queue_seconds: _Optional[float] = ..., prefill_seconds: _Optional[float] = ..., scoring_seconds: _Optional[float] = ..., batch_requests: _Optional[int] = ..., tokens_saved: _Optional[int] = ...) -> None: ...

class LogProbsRequest(_message.Message):
    __slots__ = ("prompt", "continuation", "top_k")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CONTINUATION_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    continuation: str
    top_k: int
    def __init__(self, prompt: _Optional[str] = ..., continuation: _Optional[str] = ..., top_k: _Optional[int] = ...) -> None: ...

class TokenLogProb(_message.Message):
    __slots__ = ("token_id", "token", "logprob")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    token: str
    logprob: float
    def __init__(self, token_id: _Optional[int] = ..., token: _Optional[str] = ..., logprob: _Optional[float] = ...) -> None: ...

class PositionLogProbs(_message.Message):
    __slots__ = ("token", "top")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    token: TokenLogProb
    top: _containers.RepeatedCompositeFieldContainer[TokenLogProb]
    def __init__(self, token: _Optional[_Union[TokenLogProb, _Mapping]] = ..., top: _Optional[_Iterable[_Union[TokenLogProb, _Mapping]]] = ...) -> None: ...

class LogProbsResponse(_message.Message):
    __slots__ = ("tokens", "total", "prompt_tokens", "queue_seconds", "engine_seconds")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[PositionLogProbs]
    total: float
    prompt_tokens: int
    queue_seconds: float
    engine_seconds: float
    def __init__(self, tokens: _Optional[_Iterable[_Union[PositionLogProbs, _Mapping]]] = ..., total: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., queue_seconds: _Optional[float] = ..., engine_seconds: _Optional[float] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfoResponse(_message.Message):
    __slots__ = ("model", "engine", "dtype", "vocab_size", "template", "chat_template", "default_labels", "default_label_token_ids", "stage", "model_hash", "slimkit_version", "process_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_LABELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_LABEL_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    SLIMKIT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROCESS_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    engine: str
    dtype: str
    vocab_size: int
    template: str
    chat_template: bool
    default_labels: _containers.RepeatedScalarFieldContainer[str]
    default_label_token_ids: _containers.RepeatedScalarFieldContainer[int]
    stage: str
    model_hash: str
    slimkit_version: str
    process_id: int
    def __init__(self, model: _Optional[str] = ..., engine: _Optional[str] = ..., dtype: _Optional[str] = ..., vocab_size: _Optional[int] = ..., template: _Optional[str] = ..., chat_template: _Optional[bool] = ..., default_labels: _Optional[_Iterable[str]] = ..., default_label_token_ids: _Optional[_Iterable[int]] = ..., stage: _Optional[str] = ..., model_hash: _Optional[str] = ..., slimkit_version: _Optional[str] = ..., process_id: _Optional[int] = ...) -> None: ...
