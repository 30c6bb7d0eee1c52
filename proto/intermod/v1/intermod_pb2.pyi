from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TensorFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TENSOR_FORMAT_UNSPECIFIED: _ClassVar[TensorFormat]
    TENSOR_FORMAT_SAFETENSORS: _ClassVar[TensorFormat]
    TENSOR_FORMAT_NPY: _ClassVar[TensorFormat]

class ModelSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_SOURCE_UNSPECIFIED: _ClassVar[ModelSource]
    MODEL_SOURCE_SPEC: _ClassVar[ModelSource]
    MODEL_SOURCE_OPERATOR: _ClassVar[ModelSource]
    MODEL_SOURCE_EXAMPLE: _ClassVar[ModelSource]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
    JOB_STATE_INTERRUPTED: _ClassVar[JobState]

class ExportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_FORMAT_UNSPECIFIED: _ClassVar[ExportFormat]
    EXPORT_FORMAT_JSON: _ClassVar[ExportFormat]
    EXPORT_FORMAT_GRAPHML: _ClassVar[ExportFormat]
    EXPORT_FORMAT_SAFETENSORS: _ClassVar[ExportFormat]
    EXPORT_FORMAT_PNG: _ClassVar[ExportFormat]
    EXPORT_FORMAT_SVG: _ClassVar[ExportFormat]
    EXPORT_FORMAT_HTML: _ClassVar[ExportFormat]

class AblationKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ABLATION_KIND_UNSPECIFIED: _ClassVar[AblationKind]
    ABLATION_KIND_CURVE: _ClassVar[AblationKind]
    ABLATION_KIND_EDGES: _ClassVar[AblationKind]
    ABLATION_KIND_CUT: _ClassVar[AblationKind]
    ABLATION_KIND_EFFECTS: _ClassVar[AblationKind]
    ABLATION_KIND_AUTO: _ClassVar[AblationKind]
TENSOR_FORMAT_UNSPECIFIED: TensorFormat
TENSOR_FORMAT_SAFETENSORS: TensorFormat
TENSOR_FORMAT_NPY: TensorFormat
MODEL_SOURCE_UNSPECIFIED: ModelSource
MODEL_SOURCE_SPEC: ModelSource
MODEL_SOURCE_OPERATOR: ModelSource
MODEL_SOURCE_EXAMPLE: ModelSource
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
JOB_STATE_INTERRUPTED: JobState
EXPORT_FORMAT_UNSPECIFIED: ExportFormat
EXPORT_FORMAT_JSON: ExportFormat
EXPORT_FORMAT_GRAPHML: ExportFormat
EXPORT_FORMAT_SAFETENSORS: ExportFormat
EXPORT_FORMAT_PNG: ExportFormat
EXPORT_FORMAT_SVG: ExportFormat
EXPORT_FORMAT_HTML: ExportFormat
ABLATION_KIND_UNSPECIFIED: AblationKind
ABLATION_KIND_CURVE: AblationKind
ABLATION_KIND_EDGES: AblationKind
ABLATION_KIND_CUT: AblationKind
ABLATION_KIND_EFFECTS: AblationKind
ABLATION_KIND_AUTO: AblationKind

class UploadHeader(_message.Message):
    __slots__ = ("name", "format", "total_bytes", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: TensorFormat
    total_bytes: int
    sha256: str
    def __init__(self, name: _Optional[str] = ..., format: _Optional[_Union[TensorFormat, str]] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadTensorsRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class TensorInfo(_message.Message):
    __slots__ = ("name", "shape", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ...) -> None: ...

class TensorSet(_message.Message):
    __slots__ = ("tensor_set_id", "name", "tensors", "total_bytes", "sha256")
    TENSOR_SET_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    tensor_set_id: str
    name: str
    tensors: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    total_bytes: int
    sha256: str
    def __init__(self, tensor_set_id: _Optional[str] = ..., name: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadTensorsResponse(_message.Message):
    __slots__ = ("tensor_set",)
    TENSOR_SET_FIELD_NUMBER: _ClassVar[int]
    tensor_set: TensorSet
    def __init__(self, tensor_set: _Optional[_Union[TensorSet, _Mapping]] = ...) -> None: ...

class LayerSpec(_message.Message):
    __slots__ = ("type", "in_features", "out_features", "bias", "elementwise_affine", "eps", "approximate", "in_channels", "out_channels", "kernel_size", "stride", "padding")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    IN_FEATURES_FIELD_NUMBER: _ClassVar[int]
    OUT_FEATURES_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    ELEMENTWISE_AFFINE_FIELD_NUMBER: _ClassVar[int]
    EPS_FIELD_NUMBER: _ClassVar[int]
    APPROXIMATE_FIELD_NUMBER: _ClassVar[int]
    IN_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    OUT_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    PADDING_FIELD_NUMBER: _ClassVar[int]
    type: str
    in_features: int
    out_features: int
    bias: bool
    elementwise_affine: bool
    eps: float
    approximate: str
    in_channels: int
    out_channels: int
    kernel_size: _containers.RepeatedScalarFieldContainer[int]
    stride: _containers.RepeatedScalarFieldContainer[int]
    padding: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, type: _Optional[str] = ..., in_features: _Optional[int] = ..., out_features: _Optional[int] = ..., bias: _Optional[bool] = ..., elementwise_affine: _Optional[bool] = ..., eps: _Optional[float] = ..., approximate: _Optional[str] = ..., in_channels: _Optional[int] = ..., out_channels: _Optional[int] = ..., kernel_size: _Optional[_Iterable[int]] = ..., stride: _Optional[_Iterable[int]] = ..., padding: _Optional[_Iterable[int]] = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("layers",)
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[LayerSpec]
    def __init__(self, layers: _Optional[_Iterable[_Union[LayerSpec, _Mapping]]] = ...) -> None: ...

class RegisterModelRequest(_message.Message):
    __slots__ = ("name", "spec", "weights_tensor_set_id", "hf_config_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_TENSOR_SET_ID_FIELD_NUMBER: _ClassVar[int]
    HF_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: ModelSpec
    weights_tensor_set_id: str
    hf_config_json: str
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[ModelSpec, _Mapping]] = ..., weights_tensor_set_id: _Optional[str] = ..., hf_config_json: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_id", "name", "source", "spec", "layers", "has_inputs", "n_parameters", "description")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    HAS_INPUTS_FIELD_NUMBER: _ClassVar[int]
    N_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    name: str
    source: ModelSource
    spec: ModelSpec
    layers: _containers.RepeatedScalarFieldContainer[str]
    has_inputs: bool
    n_parameters: int
    description: str
    def __init__(self, model_id: _Optional[str] = ..., name: _Optional[str] = ..., source: _Optional[_Union[ModelSource, str]] = ..., spec: _Optional[_Union[ModelSpec, _Mapping]] = ..., layers: _Optional[_Iterable[str]] = ..., has_inputs: _Optional[bool] = ..., n_parameters: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...

class RegisterModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GraphOptions(_message.Message):
    __slots__ = ("jacobian_target", "center", "include_bias", "tol_g", "tol_m", "scaling", "kind", "n_probes", "edge_method", "n_alpha", "batch_size", "dtype", "seed", "layout", "rerotate")
    class LayoutEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JACOBIAN_TARGET_FIELD_NUMBER: _ClassVar[int]
    CENTER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_BIAS_FIELD_NUMBER: _ClassVar[int]
    TOL_G_FIELD_NUMBER: _ClassVar[int]
    TOL_M_FIELD_NUMBER: _ClassVar[int]
    SCALING_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    N_PROBES_FIELD_NUMBER: _ClassVar[int]
    EDGE_METHOD_FIELD_NUMBER: _ClassVar[int]
    N_ALPHA_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    REROTATE_FIELD_NUMBER: _ClassVar[int]
    jacobian_target: str
    center: bool
    include_bias: bool
    tol_g: float
    tol_m: float
    scaling: str
    kind: str
    n_probes: int
    edge_method: str
    n_alpha: int
    batch_size: int
    dtype: str
    seed: int
    layout: _containers.ScalarMap[str, str]
    rerotate: bool
    def __init__(self, jacobian_target: _Optional[str] = ..., center: _Optional[bool] = ..., include_bias: _Optional[bool] = ..., tol_g: _Optional[float] = ..., tol_m: _Optional[float] = ..., scaling: _Optional[str] = ..., kind: _Optional[str] = ..., n_probes: _Optional[int] = ..., edge_method: _Optional[str] = ..., n_alpha: _Optional[int] = ..., batch_size: _Optional[int] = ..., dtype: _Optional[str] = ..., seed: _Optional[int] = ..., layout: _Optional[_Mapping[str, str]] = ..., rerotate: _Optional[bool] = ...) -> None: ...

class ComputeGraphRequest(_message.Message):
    __slots__ = ("model_id", "data_tensor_set_id", "data_tensor", "layers", "options")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_TENSOR_SET_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_TENSOR_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    data_tensor_set_id: str
    data_tensor: str
    layers: _containers.RepeatedScalarFieldContainer[str]
    options: GraphOptions
    def __init__(self, model_id: _Optional[str] = ..., data_tensor_set_id: _Optional[str] = ..., data_tensor: _Optional[str] = ..., layers: _Optional[_Iterable[str]] = ..., options: _Optional[_Union[GraphOptions, _Mapping]] = ...) -> None: ...

class ComputeGraphResponse(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "state", "stage", "stage_done", "stage_total", "fraction", "elapsed_seconds", "eta_seconds", "graph_id", "error", "model_id", "device", "created_time")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STAGE_DONE_FIELD_NUMBER: _ClassVar[int]
    STAGE_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    stage: str
    stage_done: int
    stage_total: int
    fraction: float
    elapsed_seconds: float
    eta_seconds: float
    graph_id: str
    error: str
    model_id: str
    device: str
    created_time: float
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., stage: _Optional[str] = ..., stage_done: _Optional[int] = ..., stage_total: _Optional[int] = ..., fraction: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., graph_id: _Optional[str] = ..., error: _Optional[str] = ..., model_id: _Optional[str] = ..., device: _Optional[str] = ..., created_time: _Optional[float] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class GraphInfo(_message.Message):
    __slots__ = ("graph_id", "model_id", "layers", "n_nodes", "n_edges", "n_samples", "created_time", "summary_json", "job_id")
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    N_NODES_FIELD_NUMBER: _ClassVar[int]
    N_EDGES_FIELD_NUMBER: _ClassVar[int]
    N_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIME_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_JSON_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    graph_id: str
    model_id: str
    layers: _containers.RepeatedScalarFieldContainer[str]
    n_nodes: int
    n_edges: int
    n_samples: int
    created_time: float
    summary_json: str
    job_id: str
    def __init__(self, graph_id: _Optional[str] = ..., model_id: _Optional[str] = ..., layers: _Optional[_Iterable[str]] = ..., n_nodes: _Optional[int] = ..., n_edges: _Optional[int] = ..., n_samples: _Optional[int] = ..., created_time: _Optional[float] = ..., summary_json: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("layer", "index", "is_bias")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LAMBDA_FIELD_NUMBER: _ClassVar[int]
    IS_BIAS_FIELD_NUMBER: _ClassVar[int]
    layer: str
    index: int
    is_bias: bool
    def __init__(self, layer: _Optional[str] = ..., index: _Optional[int] = ..., is_bias: _Optional[bool] = ..., **kwargs) -> None: ...

class GetGraphRequest(_message.Message):
    __slots__ = ("graph_id", "include_nodes", "include_edges")
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_NODES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EDGES_FIELD_NUMBER: _ClassVar[int]
    graph_id: str
    include_nodes: bool
    include_edges: bool
    def __init__(self, graph_id: _Optional[str] = ..., include_nodes: _Optional[bool] = ..., include_edges: _Optional[bool] = ...) -> None: ...

class GetGraphResponse(_message.Message):
    __slots__ = ("graph", "nodes", "src", "dst", "w")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    W_FIELD_NUMBER: _ClassVar[int]
    graph: GraphInfo
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    src: _containers.RepeatedScalarFieldContainer[int]
    dst: _containers.RepeatedScalarFieldContainer[int]
    w: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, graph: _Optional[_Union[GraphInfo, _Mapping]] = ..., nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., src: _Optional[_Iterable[int]] = ..., dst: _Optional[_Iterable[int]] = ..., w: _Optional[_Iterable[float]] = ...) -> None: ...

class ModuleSearch(_message.Message):
    __slots__ = ("epsilon", "objective", "resolution", "n_modules", "seed", "n_restarts", "include_bias")
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    N_MODULES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    N_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_BIAS_FIELD_NUMBER: _ClassVar[int]
    epsilon: float
    objective: str
    resolution: float
    n_modules: int
    seed: int
    n_restarts: int
    include_bias: bool
    def __init__(self, epsilon: _Optional[float] = ..., objective: _Optional[str] = ..., resolution: _Optional[float] = ..., n_modules: _Optional[int] = ..., seed: _Optional[int] = ..., n_restarts: _Optional[int] = ..., include_bias: _Optional[bool] = ...) -> None: ...

class ExportGraphRequest(_message.Message):
    __slots__ = ("graph_id", "format", "modules", "top_n")
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MODULES_FIELD_NUMBER: _ClassVar[int]
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    graph_id: str
    format: ExportFormat
    modules: ModuleSearch
    top_n: int
    def __init__(self, graph_id: _Optional[str] = ..., format: _Optional[_Union[ExportFormat, str]] = ..., modules: _Optional[_Union[ModuleSearch, _Mapping]] = ..., top_n: _Optional[int] = ...) -> None: ...

class ExportGraphResponse(_message.Message):
    __slots__ = ("chunk", "total_bytes", "sha256")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    total_bytes: int
    sha256: str
    def __init__(self, chunk: _Optional[bytes] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class ListGraphsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListGraphsResponse(_message.Message):
    __slots__ = ("graphs",)
    GRAPHS_FIELD_NUMBER: _ClassVar[int]
    graphs: _containers.RepeatedCompositeFieldContainer[GraphInfo]
    def __init__(self, graphs: _Optional[_Iterable[_Union[GraphInfo, _Mapping]]] = ...) -> None: ...

class DeleteGraphRequest(_message.Message):
    __slots__ = ("graph_id",)
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    graph_id: str
    def __init__(self, graph_id: _Optional[str] = ...) -> None: ...

class DeleteGraphResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Module(_message.Message):
    __slots__ = ("id", "nodes", "size", "sizes_by_layer", "internal", "cut")
    class SizesByLayerEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SIZES_BY_LAYER_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_FIELD_NUMBER: _ClassVar[int]
    CUT_FIELD_NUMBER: _ClassVar[int]
    id: int
    nodes: _containers.RepeatedScalarFieldContainer[int]
    size: int
    sizes_by_layer: _containers.ScalarMap[str, int]
    internal: float
    cut: float
    def __init__(self, id: _Optional[int] = ..., nodes: _Optional[_Iterable[int]] = ..., size: _Optional[int] = ..., sizes_by_layer: _Optional[_Mapping[str, int]] = ..., internal: _Optional[float] = ..., cut: _Optional[float] = ...) -> None: ...

class Partition(_message.Message):
    __slots__ = ("membership", "modules", "cost", "cost_units", "quality", "inactive", "epsilon", "objective", "resolution", "seed", "n_modules", "partition_json")
    MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    MODULES_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    COST_UNITS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    INACTIVE_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    N_MODULES_FIELD_NUMBER: _ClassVar[int]
    PARTITION_JSON_FIELD_NUMBER: _ClassVar[int]
    membership: _containers.RepeatedScalarFieldContainer[int]
    modules: _containers.RepeatedCompositeFieldContainer[Module]
    cost: float
    cost_units: float
    quality: float
    inactive: _containers.RepeatedScalarFieldContainer[int]
    epsilon: float
    objective: str
    resolution: float
    seed: int
    n_modules: int
    partition_json: str
    def __init__(self, membership: _Optional[_Iterable[int]] = ..., modules: _Optional[_Iterable[_Union[Module, _Mapping]]] = ..., cost: _Optional[float] = ..., cost_units: _Optional[float] = ..., quality: _Optional[float] = ..., inactive: _Optional[_Iterable[int]] = ..., epsilon: _Optional[float] = ..., objective: _Optional[str] = ..., resolution: _Optional[float] = ..., seed: _Optional[int] = ..., n_modules: _Optional[int] = ..., partition_json: _Optional[str] = ...) -> None: ...

class FindModulesRequest(_message.Message):
    __slots__ = ("graph_id", "search")
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    graph_id: str
    search: ModuleSearch
    def __init__(self, graph_id: _Optional[str] = ..., search: _Optional[_Union[ModuleSearch, _Mapping]] = ...) -> None: ...

class FindModulesResponse(_message.Message):
    __slots__ = ("partition",)
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    partition: Partition
    def __init__(self, partition: _Optional[_Union[Partition, _Mapping]] = ...) -> None: ...

class SweepRequest(_message.Message):
    __slots__ = ("graph_id", "epsilons", "resolutions", "search")
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    EPSILONS_FIELD_NUMBER: _ClassVar[int]
    RESOLUTIONS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    graph_id: str
    epsilons: _containers.RepeatedScalarFieldContainer[float]
    resolutions: _containers.RepeatedScalarFieldContainer[float]
    search: ModuleSearch
    def __init__(self, graph_id: _Optional[str] = ..., epsilons: _Optional[_Iterable[float]] = ..., resolutions: _Optional[_Iterable[float]] = ..., search: _Optional[_Union[ModuleSearch, _Mapping]] = ...) -> None: ...

class SweepResponse(_message.Message):
    __slots__ = ("index", "total", "partition")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    index: int
    total: int
    partition: Partition
    def __init__(self, index: _Optional[int] = ..., total: _Optional[int] = ..., partition: _Optional[_Union[Partition, _Mapping]] = ...) -> None: ...

class ScorePartitionRequest(_message.Message):
    __slots__ = ("graph_id", "membership", "epsilon")
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    graph_id: str
    membership: _containers.RepeatedScalarFieldContainer[int]
    epsilon: float
    def __init__(self, graph_id: _Optional[str] = ..., membership: _Optional[_Iterable[int]] = ..., epsilon: _Optional[float] = ...) -> None: ...

class ScorePartitionResponse(_message.Message):
    __slots__ = ("cost", "cost_units", "n_cut_edges")
    COST_FIELD_NUMBER: _ClassVar[int]
    COST_UNITS_FIELD_NUMBER: _ClassVar[int]
    N_CUT_EDGES_FIELD_NUMBER: _ClassVar[int]
    cost: float
    cost_units: float
    n_cut_edges: int
    def __init__(self, cost: _Optional[float] = ..., cost_units: _Optional[float] = ..., n_cut_edges: _Optional[int] = ...) -> None: ...

class ComparePartitionsRequest(_message.Message):
    __slots__ = ("membership_a", "membership_b")
    MEMBERSHIP_A_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_B_FIELD_NUMBER: _ClassVar[int]
    membership_a: _containers.RepeatedScalarFieldContainer[int]
    membership_b: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, membership_a: _Optional[_Iterable[int]] = ..., membership_b: _Optional[_Iterable[int]] = ...) -> None: ...

class ComparePartitionsResponse(_message.Message):
    __slots__ = ("ari", "nmi")
    ARI_FIELD_NUMBER: _ClassVar[int]
    NMI_FIELD_NUMBER: _ClassVar[int]
    ari: float
    nmi: float
    def __init__(self, ari: _Optional[float] = ..., nmi: _Optional[float] = ...) -> None: ...

class DiagnoseRequest(_message.Message):
    __slots__ = ("model_id", "data_tensor_set_id", "data_tensor", "layers", "epsilon")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_TENSOR_SET_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_TENSOR_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    data_tensor_set_id: str
    data_tensor: str
    layers: _containers.RepeatedScalarFieldContainer[str]
    epsilon: float
    def __init__(self, model_id: _Optional[str] = ..., data_tensor_set_id: _Optional[str] = ..., data_tensor: _Optional[str] = ..., layers: _Optional[_Iterable[str]] = ..., epsilon: _Optional[float] = ...) -> None: ...

class DiagnoseResponse(_message.Message):
    __slots__ = ("report_json",)
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    report_json: str
    def __init__(self, report_json: _Optional[str] = ...) -> None: ...

class AblateRequest(_message.Message):
    __slots__ = ("graph_id", "kind", "loss", "data_tensor_set_id", "data_tensor", "layer", "schedule", "schedule_points", "epsilon", "keep", "membership", "search", "n_baseline", "group", "tolerance", "resolutions", "max_modules", "seed", "batch_size")
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    DATA_TENSOR_SET_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_TENSOR_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_POINTS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    N_BASELINE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    RESOLUTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_MODULES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    graph_id: str
    kind: AblationKind
    loss: str
    data_tensor_set_id: str
    data_tensor: str
    layer: str
    schedule: str
    schedule_points: _containers.RepeatedScalarFieldContainer[int]
    epsilon: float
    keep: int
    membership: _containers.RepeatedScalarFieldContainer[int]
    search: ModuleSearch
    n_baseline: int
    group: str
    tolerance: float
    resolutions: _containers.RepeatedScalarFieldContainer[float]
    max_modules: int
    seed: int
    batch_size: int
    def __init__(self, graph_id: _Optional[str] = ..., kind: _Optional[_Union[AblationKind, str]] = ..., loss: _Optional[str] = ..., data_tensor_set_id: _Optional[str] = ..., data_tensor: _Optional[str] = ..., layer: _Optional[str] = ..., schedule: _Optional[str] = ..., schedule_points: _Optional[_Iterable[int]] = ..., epsilon: _Optional[float] = ..., keep: _Optional[int] = ..., membership: _Optional[_Iterable[int]] = ..., search: _Optional[_Union[ModuleSearch, _Mapping]] = ..., n_baseline: _Optional[int] = ..., group: _Optional[str] = ..., tolerance: _Optional[float] = ..., resolutions: _Optional[_Iterable[float]] = ..., max_modules: _Optional[int] = ..., seed: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class AblateResponse(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetAblationRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class AblationCurveResult(_message.Message):
    __slots__ = ("layer", "basis_kind", "n_kept", "loss", "n_directions", "reconstruction_loss", "needed")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    BASIS_KIND_FIELD_NUMBER: _ClassVar[int]
    N_KEPT_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    N_DIRECTIONS_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_LOSS_FIELD_NUMBER: _ClassVar[int]
    NEEDED_FIELD_NUMBER: _ClassVar[int]
    layer: str
    basis_kind: str
    n_kept: _containers.RepeatedScalarFieldContainer[int]
    loss: _containers.RepeatedScalarFieldContainer[float]
    n_directions: int
    reconstruction_loss: float
    needed: int
    def __init__(self, layer: _Optional[str] = ..., basis_kind: _Optional[str] = ..., n_kept: _Optional[_Iterable[int]] = ..., loss: _Optional[_Iterable[float]] = ..., n_directions: _Optional[int] = ..., reconstruction_loss: _Optional[float] = ..., needed: _Optional[int] = ...) -> None: ...

class EdgeAblationResult(_message.Message):
    __slots__ = ("loss", "reconstruction_loss", "n_kept", "n_total", "n_masks")
    LOSS_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_LOSS_FIELD_NUMBER: _ClassVar[int]
    N_KEPT_FIELD_NUMBER: _ClassVar[int]
    N_TOTAL_FIELD_NUMBER: _ClassVar[int]
    N_MASKS_FIELD_NUMBER: _ClassVar[int]
    loss: float
    reconstruction_loss: float
    n_kept: int
    n_total: int
    n_masks: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, loss: _Optional[float] = ..., reconstruction_loss: _Optional[float] = ..., n_kept: _Optional[int] = ..., n_total: _Optional[int] = ..., n_masks: _Optional[_Iterable[int]] = ...) -> None: ...

class ModuleCutResult(_message.Message):
    __slots__ = ("loss", "baseline", "baseline_spread", "baseline_losses", "inactive_loss", "reconstruction_loss", "n_modules", "n_forward")
    LOSS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_SPREAD_FIELD_NUMBER: _ClassVar[int]
    BASELINE_LOSSES_FIELD_NUMBER: _ClassVar[int]
    INACTIVE_LOSS_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_LOSS_FIELD_NUMBER: _ClassVar[int]
    N_MODULES_FIELD_NUMBER: _ClassVar[int]
    N_FORWARD_FIELD_NUMBER: _ClassVar[int]
    loss: float
    baseline: float
    baseline_spread: float
    baseline_losses: _containers.RepeatedScalarFieldContainer[float]
    inactive_loss: float
    reconstruction_loss: float
    n_modules: int
    n_forward: int
    def __init__(self, loss: _Optional[float] = ..., baseline: _Optional[float] = ..., baseline_spread: _Optional[float] = ..., baseline_losses: _Optional[_Iterable[float]] = ..., inactive_loss: _Optional[float] = ..., reconstruction_loss: _Optional[float] = ..., n_modules: _Optional[int] = ..., n_forward: _Optional[int] = ...) -> None: ...

class ModuleEffectsResult(_message.Message):
    __slots__ = ("module_ids", "output_labels", "group", "loss_increase", "loss", "reconstruction_loss")
    MODULE_IDS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_LABELS_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    LOSS_INCREASE_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_LOSS_FIELD_NUMBER: _ClassVar[int]
    module_ids: _containers.RepeatedScalarFieldContainer[int]
    output_labels: _containers.RepeatedScalarFieldContainer[str]
    group: str
    loss_increase: _containers.RepeatedScalarFieldContainer[float]
    loss: _containers.RepeatedScalarFieldContainer[float]
    reconstruction_loss: float
    def __init__(self, module_ids: _Optional[_Iterable[int]] = ..., output_labels: _Optional[_Iterable[str]] = ..., group: _Optional[str] = ..., loss_increase: _Optional[_Iterable[float]] = ..., loss: _Optional[_Iterable[float]] = ..., reconstruction_loss: _Optional[float] = ...) -> None: ...

class AutoModulesResult(_message.Message):
    __slots__ = ("partition", "epsilon", "cut_loss", "tolerance", "within_tolerance", "coverage")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    CUT_LOSS_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    WITHIN_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    partition: Partition
    epsilon: float
    cut_loss: float
    tolerance: float
    within_tolerance: bool
    coverage: float
    def __init__(self, partition: _Optional[_Union[Partition, _Mapping]] = ..., epsilon: _Optional[float] = ..., cut_loss: _Optional[float] = ..., tolerance: _Optional[float] = ..., within_tolerance: _Optional[bool] = ..., coverage: _Optional[float] = ...) -> None: ...

class GetAblationResponse(_message.Message):
    __slots__ = ("job", "kind", "loss", "scale", "curve", "edges", "cut", "effects", "auto", "result_json")
    JOB_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    CURVE_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    CUT_FIELD_NUMBER: _ClassVar[int]
    EFFECTS_FIELD_NUMBER: _ClassVar[int]
    AUTO_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    job: Job
    kind: AblationKind
    loss: str
    scale: float
    curve: AblationCurveResult
    edges: EdgeAblationResult
    cut: ModuleCutResult
    effects: ModuleEffectsResult
    auto: AutoModulesResult
    result_json: str
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., kind: _Optional[_Union[AblationKind, str]] = ..., loss: _Optional[str] = ..., scale: _Optional[float] = ..., curve: _Optional[_Union[AblationCurveResult, _Mapping]] = ..., edges: _Optional[_Union[EdgeAblationResult, _Mapping]] = ..., cut: _Optional[_Union[ModuleCutResult, _Mapping]] = ..., effects: _Optional[_Union[ModuleEffectsResult, _Mapping]] = ..., auto: _Optional[_Union[AutoModulesResult, _Mapping]] = ..., result_json: _Optional[str] = ...) -> None: ...
