"""The keys of the pipeline file format, by section, and the values some of them take.

They are the configuration model's fields as written in YAML (``config``
re-exports every name); the parsers (``config_entries``), the Helm chart's
schema test and ``document`` read them from there.
"""

TOP_LEVEL_KEYS = ("shared_memory", "kernels", "sources", "sinks", "namespace", "realtime")
STREAM_KEYS = (
    "name", "shape", "dtype", "storage", "gpu_device", "cpu_mirror", "notify", "mode", "initial",
)
KERNEL_KEYS = (
    "name", "kind", "input", "inputs", "output", "outputs", "auxiliary", "operation",
    "parameters", "read_timeout", "pause_sleep", "poll_interval", "trigger_policy",
    "synchronization", "propagate_frame_id", "cpu", "realtime",
)
SOURCE_KEYS = (
    "name", "kind", "stream", "streams", "auxiliary", "parameters", "poll_interval", "read_timeout",
    "process", "realtime",
)
SINK_KEYS = (
    "name", "kind", "stream", "outputs", "auxiliary", "parameters", "read_timeout", "pause_sleep",
    "consume_timeout",
)
SYNCHRONIZATION_KEYS = ("mode", "on_skew", "max_skew_generations", "max_wait_s", "timeout")
STREAM_MODES = ("create", "attach", "create_or_attach", "replace")
TRIGGER_POLICIES = ("any_new", "all_new")
SYNCHRONIZATION_MODES = ("count", "matching_frame_id")
INITIAL_KEYS = {
    "constant": ("pattern", "value"),
    "normal": ("pattern", "seed", "mean", "std"),
    "values": ("pattern", "values"),
    "identity": ("pattern", "scale"),
}
