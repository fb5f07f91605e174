#!/usr/bin/env python3
"""edgeprune device agent: one file, Python 3.8+, stdlib + numpy + whichever runtime it finds.

Wire protocol (protocol version 1): JSON lines on stdin/stdout, one request per line.

    request   {"id": 1, "op": "hello", "protocol": 1}
    reply     {"id": 1, "ok": true, ...fields...}
    error     {"id": 1, "ok": false, "error": {"type": "BadModel", "message": "..."}}

Operations:
    hello   protocol version, runtimes {name: version}, python, cpu, cores, memory_mb,
            hostname, and where available throttled (Raspberry Pi vcgencmd) and nvpmodel
            (Jetson). A request whose "protocol" differs from ours is a ProtocolMismatch.
    put     {"sha256", "ext"[, "data_b64"]}: register a file in the content-addressed cache
            (<cache>/<sha256><ext>). Large files are uploaded beforehand by SFTP or adb push;
            put verifies the hash (a mismatch deletes the file) and reports "present".
    bench   {"sha256", "ext", "runtime", "threads", "warmup", "runs", "min_seconds",
            "warmup_seconds", "timeout_s"}: runs in a FRESH child process so peak memory is
            that model's alone; returns raw per-run times (seconds), load_ms, peak_memory_mb
            (VmHWM after the runs minus VmRSS before loading the model) and memory_method.
            The child is pre-started with numpy and the runtime already imported (one per
            runtime, never reused: a new one is started after each bench), so a bench does not
            pay for interpreter start-up and imports; `--prewarm RUNTIME` on the command line
            starts the first one at once. With "against": {"sha256", "ext"} the child, after
            the model's warm-up (and its peak memory reading), loads and warms the second
            model too and alternates short blocks (~20 ms) of the two until each has its runs
            and min_seconds: an interleaved A/B in one process, so both see the same moment of
            the device. The second model's times come back as "against_times_s". hello lists
            "paired_bench" in "features".
    infer   {"sha256", "ext", "runtime", "threads", "inputs": [base64 .npy]} -> "outputs".
            Inputs are NCHW; when the model wants NHWC they are transposed. Float inputs
            to an int8 input are quantized, and int8 outputs dequantized, with the tensor's
            scale and zero point, so the caller sends and gets floats whatever the precision.
    bye     ends the agent.

Error types: ProtocolMismatch, BadRequest, NotFound, ChecksumMismatch, NoRuntime, BadModel,
BadInput, OutOfMemory, Timeout, Internal. The agent exits on stdin EOF, when its parent
goes away, or after --idle-timeout seconds without a request.
"""
import base64
import hashlib
import io
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

PROTOCOL_VERSION = 1
HIDE_RUNTIMES_ENV = "EDGEPRUNE_AGENT_HIDE_RUNTIMES"
READY_LINE = '{"ready": true}\n'
READY_TIMEOUT_S = 120.0
BLOCK_S = 0.02  # paired bench: how long each model runs before the other takes its turn
TFLITE_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")
TFLITE_DISTS = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime",
                "tensorflow": "tensorflow"}


class AgentError(Exception):
    """An error reported to the client as {"type", "message"}."""

    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind


# ---------------------------------------------------------------- device facts

def _module_version(top):
    """Version of an installed distribution without importing it (imports can be slow)."""
    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    dist = TFLITE_DISTS.get(top, top)
    for name in (dist, dist + "-cpu", top):
        try:
            return metadata.version(name)
        except Exception:
            continue
    return None


def _has_module(name):
    """True when `name` can be imported, without importing it."""
    import importlib.util
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def available_runtimes():
    """{runtime: {"module", "version"}} for the runtimes this Python can import."""
    if os.environ.get(HIDE_RUNTIMES_ENV):
        return {}
    found = {}
    if _has_module("onnxruntime"):
        found["onnxruntime"] = {"module": "onnxruntime", "version": _module_version("onnxruntime")}
    for module in TFLITE_MODULES:
        top = module.split(".")[0]
        if _has_module(top):
            found["tflite"] = {"module": module, "version": _module_version(top)}
            break
    return found


def _cpu_model():
    """CPU model name from /proc/cpuinfo (x86 'model name', ARM 'Model'/'Hardware')."""
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
    except OSError:
        return platform.processor() or platform.machine()
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in text.splitlines():
            if line.split(":")[0].strip() == key:
                return line.split(":", 1)[1].strip()
    return platform.machine()


def _memory_mb():
    """Total memory in MB, or the cgroup limit when that is lower."""
    total = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    limit = cgroup_memory_limit_mb()
    if limit is not None and (total is None or limit < total):
        return limit
    return total


def _cgroup_paths():
    """{controller: path} of this process from /proc/self/cgroup ('' for cgroup v2)."""
    paths = {}
    try:
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                parts = line.strip().split(":", 2)
                if len(parts) == 3:
                    for ctl in parts[1].split(","):
                        paths[ctl] = parts[2]
    except OSError:
        pass
    return paths


def _read(path):
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _memory_cgroup_dir():
    """Directory of this process's memory cgroup (v1 or v2), or None."""
    paths = _cgroup_paths()
    if "memory" in paths:
        return "/sys/fs/cgroup/memory" + paths["memory"]
    if "" in paths and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "/sys/fs/cgroup" + paths[""]
    return None


def cgroup_memory_limit_mb():
    """The memory limit of this process's cgroup in MB, or None when unlimited."""
    base = _memory_cgroup_dir()
    if base is None:
        return None
    for name in ("memory.limit_in_bytes", "memory.max"):
        value = _read(os.path.join(base, name))
        if value and value != "max" and int(value) < (1 << 60):
            return int(value) / (1024.0 * 1024.0)
    return None


def oom_kill_count():
    """Number of OOM kills recorded by this process's memory cgroup (None if unknown)."""
    base = _memory_cgroup_dir()
    if base is None:
        return None
    for name in ("memory.events", "memory.oom_control"):
        text = _read(os.path.join(base, name))
        for line in (text or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    return None


def _run_quiet(argv, timeout=5.0):
    """Output of a small system command, or None when it is missing or fails."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode("utf-8", "replace").strip() if out.returncode == 0 else None


def throttled_state():
    """Raspberry Pi `vcgencmd get_throttled` as an int bit field, or None elsewhere."""
    text = _run_quiet(["vcgencmd", "get_throttled"])
    if not text or "=" not in text:
        return None
    try:
        return int(text.split("=", 1)[1], 16)
    except ValueError:
        return None


def nvpmodel_mode():
    """Jetson power mode from `nvpmodel -q`, or None elsewhere."""
    text = _run_quiet(["nvpmodel", "-q"])
    if not text:
        return None
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def op_hello(state, req):
    """Identify the device and its runtimes."""
    runtimes = runtimes_of(state)
    for name in req.get("prewarm") or []:
        prewarm(state, name)
    reply = {
        "protocol": PROTOCOL_VERSION,
        "runtimes": dict((k, v["version"]) for k, v in runtimes.items()),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_mb": _memory_mb(),
        "hostname": socket.gethostname(),
        "machine": platform.machine(),
        "cache_dir": state["cache"],
        "pid": os.getpid(),
        "features": ["paired_bench"],
    }
    throttled = throttled_state()
    if throttled is not None:
        reply["throttled"] = throttled
    mode = nvpmodel_mode()
    if mode is not None:
        reply["nvpmodel"] = mode
    return reply


# ---------------------------------------------------------------- content-addressed cache

def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha(value):
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise AgentError("BadRequest", "sha256 must be 64 lowercase hex digits, got %r" % (value,))
    return value


def _check_ext(value):
    if value not in (".onnx", ".tflite", ".bin", ".npy"):
        raise AgentError("BadRequest", "ext must be .onnx, .tflite, .bin or .npy, got %r" % (value,))
    return value


def cache_path(state, req):
    """Path of the cached file named by the request's sha256 and ext."""
    return os.path.join(state["cache"], _check_sha(req.get("sha256")) + _check_ext(req.get("ext", ".bin")))


def op_put(state, req):
    """Register (and verify) a file in the cache; small files may come inline as base64."""
    path = cache_path(state, req)
    if req.get("data_b64") is not None:
        data = base64.b64decode(req["data_b64"])
        fd, tmp = tempfile.mkstemp(dir=state["cache"], prefix=".put-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    if not os.path.exists(path):
        return {"present": False, "path": path}
    actual = _sha256(path)
    if actual != req["sha256"]:
        os.remove(path)
        raise AgentError("ChecksumMismatch", "cached file %s has sha256 %s, expected %s; removed it"
                         % (path, actual, req["sha256"]))
    return {"present": True, "path": path, "bytes": os.path.getsize(path)}


def require_cached(state, req):
    """Path of a cached model, or NotFound telling the client to put it first."""
    path = cache_path(state, req)
    if not os.path.exists(path):
        raise AgentError("NotFound", "model %s is not in the device cache; put it first" % req["sha256"][:12])
    return path


# ---------------------------------------------------------------- runtimes

def _import_tflite(module):
    """The Interpreter class of the TFLite runtime module found on this device."""
    import importlib
    mod = importlib.import_module(module)
    return mod.Interpreter


class OrtRunner(object):
    """Runs an ONNX model with onnxruntime on the CPU with an explicit thread count."""

    def __init__(self, path, threads):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise _load_error(exc, path)
        self.inputs = self.sess.get_inputs()
        self.names = [i.name for i in self.inputs]

    def input_specs(self):
        """[(shape with None for dynamic dims, numpy dtype)] per input."""
        import numpy as np
        specs = []
        for i in self.inputs:
            shape = [d if isinstance(d, int) and d > 0 else None for d in i.shape]
            specs.append((shape, _ort_dtype(i.type, np)))
        return specs

    def run(self, arrays):
        return self.sess.run(None, dict(zip(self.names, arrays)))

    def to_model(self, arrays):
        """The inputs in the model's dtypes."""
        return [a.astype(spec[1], copy=False) for a, spec in zip(arrays, self.input_specs())]

    def to_float(self, outputs):
        return outputs


def _ort_dtype(type_str, np):
    table = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
             "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}
    return table.get(type_str, np.float32)


class TfliteRunner(object):
    """Runs a .tflite model with the TFLite interpreter found on the device."""

    def __init__(self, path, threads, module):
        Interpreter = _import_tflite(module)
        try:
            self.interp = Interpreter(model_path=path, num_threads=int(threads))
            self.interp.allocate_tensors()
        except Exception as exc:
            raise _load_error(exc, path)
        self.inputs = self.interp.get_input_details()
        self.outputs = self.interp.get_output_details()

    def input_specs(self):
        specs = []
        for d in self.inputs:
            sig = d.get("shape_signature", d["shape"])
            specs.append(([int(x) if int(x) > 0 else None for x in sig], d["dtype"]))
        return specs

    def run(self, arrays):
        for detail, arr in zip(self.inputs, arrays):
            if tuple(detail["shape"]) != tuple(arr.shape):
                self.interp.resize_tensor_input(detail["index"], list(arr.shape))
                self.interp.allocate_tensors()
                self.inputs = self.interp.get_input_details()
                self.outputs = self.interp.get_output_details()
        for detail, arr in zip(self.inputs, arrays):
            self.interp.set_tensor(detail["index"], arr)
        self.interp.invoke()
        return [self.interp.get_tensor(d["index"]) for d in self.outputs]

    def to_model(self, arrays):
        """The inputs in the model's dtypes; float data for an int8 input is quantized with its scale."""
        import numpy as np
        result = []
        for detail, arr in zip(self.inputs, arrays):
            dtype = np.dtype(detail["dtype"])
            scale, zero = detail.get("quantization", (0.0, 0))
            if np.issubdtype(dtype, np.integer) and np.issubdtype(arr.dtype, np.floating) and scale:
                info = np.iinfo(dtype)
                arr = np.clip(np.round(arr / scale + zero), info.min, info.max)
            result.append(arr.astype(dtype, copy=False))
        return result

    def to_float(self, outputs):
        """Outputs as float32; an int8 output is dequantized with its scale and zero point."""
        import numpy as np
        result = []
        for detail, out in zip(self.outputs, outputs):
            scale, zero = detail.get("quantization", (0.0, 0))
            if np.issubdtype(out.dtype, np.integer) and scale:
                out = ((out.astype(np.float32) - zero) * scale).astype(np.float32)
            result.append(out)
        return result


def _load_error(exc, path):
    """Map a runtime's load failure to OutOfMemory or BadModel."""
    text = "%s: %s" % (type(exc).__name__, exc)
    if isinstance(exc, MemoryError) or "bad_alloc" in text or "Failed to allocate" in text:
        return AgentError("OutOfMemory", "out of memory while loading %s: %s" % (os.path.basename(path), text[:300]))
    return AgentError("BadModel", "cannot load %s: %s" % (os.path.basename(path), text.splitlines()[0][:300] if text else ""))


def runtimes_of(state):
    """available_runtimes(), looked up once per agent (the metadata scan is not free)."""
    if state.get("runtimes") is None:
        state["runtimes"] = available_runtimes()
    return state["runtimes"]


def open_runner(path, runtime, threads, runtimes=None):
    """A runner for the model at `path` with the requested runtime."""
    if runtimes is None:
        runtimes = available_runtimes()
    want = runtime or ("tflite" if path.endswith(".tflite") else "onnxruntime")
    if want not in runtimes:
        have = ", ".join(sorted(runtimes)) or "none"
        raise AgentError("NoRuntime", "runtime %s is not installed on this device (found: %s)" % (want, have))
    if want == "onnxruntime":
        return OrtRunner(path, threads)
    return TfliteRunner(path, threads, runtimes["tflite"]["module"])


# ---------------------------------------------------------------- layout of inputs

def _fits(shape, spec):
    return len(shape) == len(spec) and all(s is None or s == d for d, s in zip(shape, spec))


def arrange_input(arr, spec_shape):
    """Return `arr` (NCHW) in the model's layout: unchanged, or transposed to NHWC."""
    import numpy as np
    arr = np.asarray(arr)
    batchless = [None] + list(spec_shape[1:])
    if _fits(arr.shape, batchless):
        return arr
    if arr.ndim == 4 and _fits(np.transpose(arr, (0, 2, 3, 1)).shape, batchless):
        return np.ascontiguousarray(np.transpose(arr, (0, 2, 3, 1)))
    want = ["?" if s is None else s for s in spec_shape]
    raise AgentError("BadInput", "input shape %s does not match the model's input %s (NCHW or NHWC)"
                     % (list(arr.shape), want))


def run_batch(runner, arrays):
    """Run float inputs of any batch size (one sample at a time when the model's batch is fixed);
    float outputs. int8 inputs and outputs are (de)quantized with the tensors' own parameters."""
    import numpy as np
    specs = runner.input_specs()
    arranged = runner.to_model([arrange_input(a, s[0]) for a, s in zip(arrays, specs)])
    batch = arranged[0].shape[0]
    fixed = specs[0][0][0]
    if fixed is None or fixed == batch:
        return runner.to_float(runner.run(arranged))
    parts = [runner.to_float(runner.run([a[i:i + 1] for a in arranged])) for i in range(batch)]
    return [np.concatenate([p[k] for p in parts], axis=0) for k in range(len(parts[0]))]


def synthetic_inputs(runner, seed=0):
    """Random inputs of the model's shapes (dynamic dims as 1) for benchmarking."""
    import numpy as np
    rng = np.random.RandomState(seed)
    arrays = []
    for shape, dtype in runner.input_specs():
        dims = [d if d is not None else 1 for d in shape]
        if np.issubdtype(np.dtype(dtype), np.integer):
            arrays.append(rng.randint(0, 4, size=dims).astype(dtype))
        else:
            arrays.append(rng.standard_normal(dims).astype(dtype))
    return arrays


# ---------------------------------------------------------------- memory accounting

def _status_kb(key):
    text = _read("/proc/self/status") or ""
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def memory_baseline():
    """(baseline_kb, method): current RSS, with the high-water mark reset where Linux allows."""
    rss = _status_kb("VmRSS")
    if rss is not None:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            return rss, "VmHWM-baseline"
        except OSError:
            pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss-baseline"


def memory_peak_kb(method):
    """Peak RSS in kB read the way `method` says."""
    if method == "VmHWM-baseline":
        return _status_kb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ---------------------------------------------------------------- bench (child process)

def _timed_runs(runner, arrays, min_runs, min_seconds, max_seconds):
    """Run until both min_runs and min_seconds are reached (or max_seconds passes)."""
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        runner.run(arrays)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        elapsed = t1 - start
        if (len(times) >= min_runs and elapsed >= min_seconds) or elapsed >= max_seconds:
            return times


def _alternating_runs(first, second, min_runs, min_seconds, max_seconds):
    """Blocks of about BLOCK_S of each runner in turn, until both reach min_runs and min_seconds."""
    times = ([], [])
    spent = [0.0, 0.0]
    start = time.perf_counter()
    while True:
        for side, (runner, arrays) in enumerate((first, second)):
            block_end = time.perf_counter() + BLOCK_S
            while True:
                t0 = time.perf_counter()
                runner.run(arrays)
                t1 = time.perf_counter()
                times[side].append(t1 - t0)
                spent[side] += t1 - t0
                if t1 >= block_end:
                    break
        done = all(len(t) >= min_runs and s >= min_seconds for t, s in zip(times, spent))
        if done or time.perf_counter() - start >= max_seconds:
            return times


def _preimport(module):
    """Import numpy and the runtime before the baseline is read: their cost is not the model's."""
    import importlib
    importlib.import_module("numpy")
    if module:
        importlib.import_module(module)


def bench_child(spec):
    """Load one model, warm up, time the counted runs; runs in its own process."""
    try:
        with open("/proc/self/oom_score_adj", "w") as fh:
            fh.write("1000")  # under a memory limit, the OOM killer should pick us, not the agent
    except OSError:
        pass
    runtime = spec.get("runtime")
    runtimes = {runtime: {"module": spec.get("module"), "version": None}}
    baseline_kb, method = memory_baseline()
    t0 = time.perf_counter()
    runner = open_runner(spec["path"], runtime, spec["threads"], runtimes)
    arrays = synthetic_inputs(runner)
    runner.run(arrays)  # first run: allocations belong to load, as benchmark_model reports them
    load_ms = (time.perf_counter() - t0) * 1000.0
    max_s = float(spec.get("max_seconds", 120.0))
    warm = _timed_runs(runner, arrays, int(spec["warmup"]), float(spec["warmup_seconds"]), max_s)
    result = {"warmup_runs": len(warm), "load_ms": load_ms, "baseline_mb": baseline_kb / 1024.0,
              "memory_method": method, "input_shapes": [list(a.shape) for a in arrays]}
    if spec.get("against_path"):
        peak_kb = memory_peak_kb(method)  # this model's alone: the other one is not loaded yet
        t1 = time.perf_counter()
        other = open_runner(spec["against_path"], runtime, spec["threads"], runtimes)
        other_arrays = synthetic_inputs(other)
        other.run(other_arrays)
        result["against_load_ms"] = (time.perf_counter() - t1) * 1000.0
        _timed_runs(other, other_arrays, int(spec["warmup"]), float(spec["warmup_seconds"]), max_s)
        times, result["against_times_s"] = _alternating_runs(
            (runner, arrays), (other, other_arrays), int(spec["runs"]), float(spec["min_seconds"]), max_s)
    else:
        times = _timed_runs(runner, arrays, int(spec["runs"]), float(spec["min_seconds"]), max_s)
        peak_kb = memory_peak_kb(method)
    result.update(times_s=times, peak_memory_mb=max(0.0, (peak_kb - baseline_kb) / 1024.0),
                  wall_s=time.perf_counter() - t0)
    return result


def child_main(module):
    """Entry of the fresh bench process: imports first, then one JSON spec on stdin, one reply on stdout."""
    _watch_parent(os.getppid())
    try:
        _preimport(module)
    except Exception:
        pass  # the runner's own import reports it as the bench's error
    sys.stdout.write(READY_LINE)  # the agent waits for this, so no import overlaps a measurement
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line.strip():
        return 0  # a pre-started child that was never used
    spec = json.loads(line)
    try:
        reply = {"ok": True, "result": bench_child(spec)}
    except AgentError as exc:
        reply = {"ok": False, "error": {"type": exc.kind, "message": str(exc)}}
    except MemoryError:
        reply = {"ok": False, "error": {"type": "OutOfMemory", "message": "out of memory while benchmarking"}}
    except Exception as exc:
        reply = {"ok": False, "error": {"type": "BadModel", "message": "%s: %s" % (type(exc).__name__, exc)}}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip the runtime's interpreter teardown: it can take longer than the bench


def _bench_spec(state, req):
    path = require_cached(state, req)
    runtime = req.get("runtime") or ("tflite" if path.endswith(".tflite") else "onnxruntime")
    runtimes = runtimes_of(state)
    if runtime not in runtimes:
        open_runner(path, runtime, 1, runtimes)  # raises NoRuntime with the list of runtimes found
    against = req.get("against")
    if against is not None:
        if not isinstance(against, dict):
            raise AgentError("BadRequest", "against must be {\"sha256\", \"ext\"}")
        against = require_cached(state, against)
    return {"path": path, "against_path": against, "runtime": runtime, "module": runtimes[runtime]["module"],
            "threads": int(req.get("threads", 1)),
            "warmup": int(req.get("warmup", 1)), "warmup_seconds": float(req.get("warmup_seconds", 0.5)),
            "runs": int(req.get("runs", 50)), "min_seconds": float(req.get("min_seconds", 1.0)),
            "max_seconds": float(req.get("max_seconds", 120.0))}


def _oom_error(before_kills):
    limit = cgroup_memory_limit_mb()
    after = oom_kill_count()
    if (before_kills is not None and after is not None and after > before_kills) or limit is not None:
        where = " (memory limit %.0f MB)" % limit if limit else ""
        return AgentError("OutOfMemory", "the model does not fit: killed for out of memory%s" % where)
    return AgentError("Internal", "the bench process was killed (SIGKILL)")


def _spawn_child(module):
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--bench-child", module or ""],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def prewarm(state, runtime):
    """Start a bench child for `runtime` that imports numpy and the runtime, then waits for its spec."""
    found = runtimes_of(state).get(runtime)
    proc = state["warm"].get(runtime)
    if found is None or (proc is not None and proc.poll() is None):
        return
    state["warm"][runtime] = _spawn_child(found["module"])


def _wait_ready(proc, timeout):
    """Read the child's ready line; False when it died or was too slow."""
    if getattr(proc, "ready", False):
        return True
    fd, seen, deadline = proc.stdout.fileno(), b"", time.time() + timeout
    while b"\n" not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.time()))
        chunk = os.read(fd, 256) if ready else b""
        if not chunk:
            return False
        seen += chunk
    proc.ready = True
    return True


def _discard(proc):
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def _take_child(state, spec):
    """A ready child for the spec's runtime (pre-started or new); other pre-started children
    finish their imports first, so none of them competes with the measurement for the CPU."""
    for runtime, proc in list(state["warm"].items()):
        if not _wait_ready(proc, READY_TIMEOUT_S):
            _discard(state["warm"].pop(runtime))
    proc = state["warm"].pop(spec["runtime"], None) or _spawn_child(spec["module"])
    if not _wait_ready(proc, READY_TIMEOUT_S):
        _discard(proc)
        raise AgentError("Internal", "the bench process did not start")
    return proc


def stop_children(state):
    """End the pre-started children (they also exit on stdin EOF or when the agent dies)."""
    for proc in state["warm"].values():
        _discard(proc)
    state["warm"] = {}


def op_bench(state, req):
    """Benchmark a cached model in a fresh child process; throttling read before and after."""
    spec = _bench_spec(state, req)
    timeout = float(req.get("timeout_s", 300.0))
    throttle_before = throttled_state()
    kills = oom_kill_count()
    t0 = time.perf_counter()
    proc = _take_child(state, spec)
    t1 = time.perf_counter()
    try:
        out, err = proc.communicate(json.dumps(spec).encode() + b"\n", timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AgentError("Timeout", "bench did not finish within %.0f s" % timeout)
    finally:
        prewarm(state, spec["runtime"])  # the next bench of this runtime finds its child ready
    if proc.returncode == -signal.SIGKILL:
        raise _oom_error(kills)
    reply = _child_reply(out, err, proc.returncode)
    result = reply["result"]
    result["throttled_before"] = throttle_before
    result["throttled_after"] = throttled_state()
    result["runtime"] = spec["runtime"]
    result["runtime_version"] = runtimes_of(state)[spec["runtime"]]["version"]
    result["agent_s"] = {"wait_for_child": t1 - t0, "child": time.perf_counter() - t1}
    return result


def _child_reply(out, err, returncode):
    """Parse the child's one-line reply, turning its error into an AgentError."""
    lines = [l for l in out.decode("utf-8", "replace").splitlines()
             if l.startswith("{") and l != READY_LINE.strip()]
    if not lines:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        if returncode is not None and returncode < 0:
            raise AgentError("BadModel", "bench process died with signal %d: %s" % (-returncode, tail[0][:300]))
        raise AgentError("Internal", "bench process exited %s: %s" % (returncode, tail[0][:300]))
    reply = json.loads(lines[-1])
    if not reply.get("ok"):
        raise AgentError(reply["error"]["type"], reply["error"]["message"])
    return reply


# ---------------------------------------------------------------- infer

def _load_npy(b64):
    import numpy as np
    try:
        return np.load(io.BytesIO(base64.b64decode(b64)), allow_pickle=False)
    except Exception as exc:
        raise AgentError("BadInput", "input is not a valid .npy array: %s" % exc)


def _dump_npy(arr):
    import numpy as np
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def op_infer(state, req):
    """Run the model on the given NCHW inputs and return the outputs as .npy."""
    path = require_cached(state, req)
    key = (path, req.get("runtime"), int(req.get("threads", 1)))
    runner = state["runners"].get(key)
    if runner is None:
        runner = open_runner(path, req.get("runtime"), key[2], runtimes_of(state))
        state["runners"] = {key: runner}  # keep one model loaded, not all of them
    inputs = [_load_npy(b) for b in req.get("inputs", [])]
    if len(inputs) != len(runner.input_specs()):
        raise AgentError("BadInput", "the model takes %d input(s), got %d" % (len(runner.input_specs()), len(inputs)))
    return {"outputs": [_dump_npy(o) for o in run_batch(runner, inputs)]}


# ---------------------------------------------------------------- main loop

OPS = {"hello": op_hello, "put": op_put, "bench": op_bench, "infer": op_infer}


def handle(state, req):
    """One reply dict for one request dict."""
    rid = req.get("id") if isinstance(req, dict) else None
    try:
        if not isinstance(req, dict) or "op" not in req:
            raise AgentError("BadRequest", "a request is a JSON object with an op")
        proto = req.get("protocol")
        if proto is not None and proto != PROTOCOL_VERSION:
            raise AgentError("ProtocolMismatch", "client speaks protocol %s, this agent speaks %d; "
                             "upload the matching agent.py" % (proto, PROTOCOL_VERSION))
        if req["op"] == "bye":
            state["running"] = False
            return {"id": rid, "ok": True}
        if req["op"] not in OPS:
            raise AgentError("BadRequest", "unknown op %r" % (req["op"],))
        reply = OPS[req["op"]](state, req)
    except AgentError as exc:
        return {"id": rid, "ok": False, "error": {"type": exc.kind, "message": str(exc)}}
    except Exception as exc:
        return {"id": rid, "ok": False, "error": {"type": "Internal", "message": "%s: %s" % (type(exc).__name__, exc)}}
    reply.update({"id": rid, "ok": True})
    return reply


def _watch_parent(parent):
    """Exit when our parent goes away (the client's session closed without EOF)."""
    def loop():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(3)
    t = threading.Thread(target=loop)
    t.daemon = True
    t.start()


def _parse_args(argv):
    args = {"cache": os.path.join(os.path.expanduser("~"), ".cache", "edgeprune-agent"), "idle": 600.0,
            "prewarm": []}
    i = 0
    while i < len(argv):
        if argv[i] == "--cache":
            args["cache"] = argv[i + 1]
        elif argv[i] == "--idle-timeout":
            args["idle"] = float(argv[i + 1])
        elif argv[i] == "--prewarm":
            args["prewarm"].append(argv[i + 1])
        i += 2
    return args


def serve(cache, idle_timeout, prewarm_runtimes=()):
    """Answer requests from stdin until bye, EOF, parent death or idle timeout."""
    if not os.path.isdir(cache):
        os.makedirs(cache)
    state = {"cache": cache, "running": True, "runners": {}, "warm": {}, "runtimes": None}
    _watch_parent(os.getppid())
    for runtime in prewarm_runtimes:
        prewarm(state, runtime)
    try:
        return _serve_loop(state, idle_timeout)
    finally:
        stop_children(state)


def _serve_loop(state, idle_timeout):
    fd = sys.stdin.fileno()
    buf = b""
    last = time.time()
    while state["running"]:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            if time.time() - last > idle_timeout:
                return 0
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return 0
        buf += chunk
        while b"\n" in buf and state["running"]:
            line, buf = buf.split(b"\n", 1)
            last = time.time()
            if line.strip():
                _answer(state, line)
    return 0


def _answer(state, line):
    try:
        req = json.loads(line.decode("utf-8"))
    except ValueError as exc:
        req = None
        reply = {"id": None, "ok": False, "error": {"type": "BadRequest", "message": "not JSON: %s" % exc}}
    if req is not None:
        reply = handle(state, req)
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()


def main(argv):
    if argv[:1] == ["--bench-child"]:
        return child_main(argv[1] if len(argv) > 1 else "")
    args = _parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    return serve(args["cache"], args["idle"], args["prewarm"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
