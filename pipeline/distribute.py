"""Training on more than one device or machine with tf.distribute: `pipeline.train_and_export --strategy`.

    --strategy default        one device (TensorFlow's default strategy: no replication)
    --strategy mirrored       every GPU of this machine (MirroredStrategy); without GPUs, the CPU's logical devices
                              (`--cpu_replicas N` splits the CPU into N of them: a test of the multi-device path)
    --strategy multi_worker   several machines, each with its GPUs (MultiWorkerMirroredStrategy); every worker runs
                              the same command with its own TF_CONFIG (README "More than one device")
    --strategy tpu            accepted and refused with one line: see `TPU_UNSUPPORTED`

What stays the same whatever the strategy, so that a run on N devices trains the model a run on one device would:

- `--batch_size` is the global batch: Keras' fit splits each batch of the data set into `--batch_size / N` images per
  replica and sums the replicas' gradients. The learning rates are for that global batch and are not rescaled with
  the number of replicas: the same command on 1, 2 or 8 devices runs the same schedule on the same batches. Growing
  `--batch_size` to fill more devices is the user's choice, and so is the learning rate that goes with it (the linear
  scaling rule of Goyal et al. 2017 is the usual start: k times the batch, k times `--learning_rate`).
- The data: Keras shards the batched data set by data (each worker keeps its share of every global batch) for the
  synthetic and folder data sets; TFDS's record files are sharded by file across workers instead.
- BatchNorm: by default each replica normalizes with the statistics of its own share of the batch (Keras' default,
  and fine with 32 or more images per replica). `--sync_batch_norm` computes them over the global batch (one
  all-reduce per BatchNorm layer and step, and Keras' unfused BatchNorm): then the replica count changes nothing but
  the order in which floating-point sums are taken.
- Checkpoints: Keras' `BackupAndRestore` and `TensorBoard` already follow the multi-worker convention (the chief writes,
  the other workers write to a `workertemp_<id>` folder they delete); the pipeline's own files (stage weights, Keras
  models, run_config.json, model.tflite and the report) are written by the chief only (`chief_path`), and the other
  workers stop after training. A run interrupted under one strategy resumes under another: checkpoints hold the
  variables, not the devices.

QAT (tfmot) trains under MirroredStrategy and MultiWorkerMirroredStrategy when the model is quantized inside the
strategy's scope. Its activation ranges are moving averages updated with `tf.compat.v1.assign_moving_average`, which
in a replica context averages the replicas' batch minima and maxima: with N replicas a range follows the mean of N
per-replica extremes, slightly inside the global batch's (tensorflow/model-optimization#1068 reports the consequence:
QAT results depend on the number of devices). The calibration that starts QAT runs outside the replicas on whole
batches and is the same on any number of devices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import threading
import time
from typing import Iterator

from absl import logging

from keras_models.backend import keras, tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
TPU_UNSUPPORTED = (
    "--strategy tpu is not supported: the pipeline is untested on TPUs (none here), and TPUs need batches of one fixed "
    "shape (drop_remainder) that its input pipeline does not produce; use --strategy mirrored or multi_worker")


@dataclasses.dataclass(frozen=True)
class Distribution:
    """The strategy a run trains under, and what the pipeline needs to know about it."""

    name: str  # one of STRATEGIES
    strategy: tf.distribute.Strategy
    num_replicas: int  # devices that each take a share of every batch, all workers together
    num_workers: int
    worker: int  # this process's index among the workers (0 is the chief)

    @property
    def is_chief(self) -> bool:
        return is_chief(self.strategy)

    def scope(self):
        """Variables (models, their optimizers) created in this scope are replicated on every device."""
        return self.strategy.scope()

    def describe(self, global_batch: int) -> str:
        where = f"{self.num_workers} workers, " if self.num_workers > 1 else ""
        return (f"strategy {self.name}: {where}{self.num_replicas} replica(s), global batch {global_batch} = "
                f"{per_replica_batch(global_batch, self.num_replicas)} per replica; learning rates are for the global "
                "batch (not rescaled with the replicas)")

    def record(self, global_batch: int, sync_batch_norm: bool) -> dict:
        return {"strategy": self.name, "replicas": self.num_replicas, "workers": self.num_workers,
                "global_batch": global_batch, "per_replica_batch": per_replica_batch(global_batch, self.num_replicas),
                "sync_batch_norm": bool(sync_batch_norm)}


def per_replica_batch(global_batch: int, num_replicas: int) -> float:
    return global_batch / max(num_replicas, 1)


def split_cpu(replicas: int) -> None:
    """Split the CPU into `replicas` logical devices, so MirroredStrategy can replicate without GPUs (tests, trials).

    TensorFlow fixes its devices when its runtime starts (the first op or device query), so this must run before that;
    afterwards it raises ValueError saying so."""
    if replicas < 1:
        raise ValueError(f"--cpu_replicas must be >= 1, got {replicas}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError:
        raise ValueError("--cpu_replicas must take effect before TensorFlow starts its runtime, and it has already "
                         "started in this process") from None


def _tf_config() -> dict:
    text = os.environ.get("TF_CONFIG", "")
    if not text.strip():
        raise ValueError("--strategy multi_worker needs TF_CONFIG in the environment (every worker's address and this "
                         "worker's index; README 'More than one device')")
    try:
        config = json.loads(text)
        task = config["task"]
        tasks = config["cluster"][task["type"]]
        index = int(task["index"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"TF_CONFIG is not a cluster spec with this task's type and index ({err!r}): see README "
                         "'More than one device'") from None
    if task["type"] not in ("worker", "chief") or not 0 <= index < len(tasks):
        raise ValueError(f"TF_CONFIG's task {task} is not one of its cluster's workers")
    return config


# How long a multi_worker run waits for its peers before it stops with a line naming the ones that did not answer.
PEER_TIMEOUT_SECONDS = 300.0


def _address(entry: str) -> tuple[str, int]:
    host, _, port = str(entry).rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"TF_CONFIG's address {entry!r} is not host:port")
    return host.strip("[]"), int(port)


def _peers(config: dict) -> tuple[tuple[str, int], list[tuple[str, str]]]:
    """This task's (host, port) and every other chief or worker of the cluster as (name, "host:port")."""
    me = (config["task"]["type"], int(config["task"]["index"]))
    own, peers = None, []
    for kind in ("chief", "worker"):
        for index, entry in enumerate(config["cluster"].get(kind, ())):
            if (kind, index) == me:
                own = _address(entry)
            else:
                _address(entry)
                peers.append((f"{kind} {index}", str(entry)))
    return own, peers


def _answers(entry: str) -> bool:
    try:
        with socket.create_connection(_address(entry), timeout=1.0):
            return True
    except OSError:
        return False


def wait_for_peers(config: dict, timeout: float = PEER_TIMEOUT_SECONDS, poll: float = 0.5) -> None:
    """Wait, in Python, until every other worker of `config` (a parsed TF_CONFIG) accepts connections on its address.

    TensorFlow forms the cluster inside one C++ call that holds the interpreter: a missing or unreachable peer hangs
    it with no output and with SIGINT and SIGTERM ignored (TensorFlow installs its own SIGTERM handler). Meeting here
    first turns that into a one-line ValueError naming the peers that did not answer, and Ctrl-C and SIGTERM stop the
    wait. Each worker listens on its own port meanwhile (closed before TensorFlow binds it), so peers that start in any
    order see each other. A peer that answers here and dies before TensorFlow connects can still hang TensorFlow."""
    own, peers = _peers(config)
    for name, entry in peers:
        host, port = _address(entry)
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as err:
            raise ValueError(f"TF_CONFIG's {name} address {entry} does not resolve ({err.strerror or err}): check "
                             "the host name") from None
    listener = socket.socket(socket.AF_INET6 if ":" in own[0] else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", own[1]))
        listener.listen(len(peers) + 1)
    except OSError as err:
        listener.close()
        raise ValueError(f"this worker's port {own[1]} (TF_CONFIG's task {config['task']}) cannot be opened "
                         f"({err.strerror or err}): is another worker of an earlier run still running?") from None
    main_thread = threading.current_thread() is threading.main_thread()
    previous_term = signal.getsignal(signal.SIGTERM) if main_thread else None
    if main_thread:
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops the wait as Ctrl-C does
    missing, deadline = list(peers), time.monotonic() + timeout
    try:
        if missing:
            logging.info("multi_worker: waiting up to %.0f s for %s", timeout, _named(missing))
        while missing:
            missing = [(name, entry) for name, entry in missing if not _answers(entry)]
            if missing and time.monotonic() > deadline:
                raise ValueError(f"{_named(missing)} did not answer within {timeout:.0f} s: start the same command "
                                 "there with its own TF_CONFIG task index, or check the address and port in TF_CONFIG")
            if missing:
                time.sleep(poll)
    except KeyboardInterrupt:
        raise ValueError(f"stopped while waiting for {_named(missing)}") from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous_term if previous_term is not None else signal.SIG_DFL)
        listener.close()


def _named(peers: list[tuple[str, str]]) -> str:
    return ", ".join(f"{name} at {entry}" for name, entry in peers)


def create(name: str, *, cpu_replicas: int = 0, peer_timeout: float = PEER_TIMEOUT_SECONDS) -> Distribution:
    """The strategy `name` (one of STRATEGIES); ValueError with a one-line message when it cannot be created.

    Call it before TensorFlow runs anything: `cpu_replicas` and MultiWorkerMirroredStrategy both configure the runtime
    at start-up."""
    if name not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if name == "tpu":
        raise ValueError(TPU_UNSUPPORTED)
    if cpu_replicas and name != "mirrored":
        raise ValueError("--cpu_replicas goes with --strategy mirrored (it splits this machine's CPU into devices)")
    if cpu_replicas:
        split_cpu(cpu_replicas)
    if name == "default":
        return Distribution(name, tf.distribute.get_strategy(), 1, 1, 0)
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy([device.name for device in devices])
        return Distribution(name, strategy, strategy.num_replicas_in_sync, 1, 0)
    config = _tf_config()
    wait_for_peers(config, peer_timeout)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    # TensorFlow's coordination service swallows SIGTERM from here on (it records a preemption that nothing here
    # acts on): give it back its default, so that `kill` stops a worker as it stops a one-device run.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    resolver = strategy.cluster_resolver
    workers = sum(len(config["cluster"].get(kind, ())) for kind in ("chief", "worker"))
    worker = int(resolver.task_id) + (1 if resolver.task_type == "worker" and "chief" in config["cluster"] else 0)
    return Distribution(name, strategy, strategy.num_replicas_in_sync, workers, worker)


def check_batch_size(global_batch: int, num_replicas: int, sync_batch_norm: bool, min_batch: int) -> None:
    """Every replica gets the same share of a batch, and BatchNorm trains on `min_batch` images or more."""
    if global_batch % num_replicas:
        raise ValueError(f"--batch_size {global_batch} is the global batch: it must be a multiple of the "
                         f"{num_replicas} replicas")
    if not sync_batch_norm and global_batch // num_replicas < min_batch:
        raise ValueError(f"--batch_size {global_batch} over {num_replicas} replicas gives each fewer than {min_batch} "
                         "images, too few for BatchNorm's statistics: raise --batch_size or add --sync_batch_norm")


def synchronize_batch_norm(model: keras.Model) -> int:
    """BatchNorm statistics over the global batch (all replicas) instead of each replica's share; returns how many
    layers (those inside tfmot's QuantizeWrappers included). Keras has no fused kernel for it. Call before the model
    is first trained, and again on the QAT model: tfmot's quantize_apply rebuilds the BatchNorm layers without it."""
    layers = [getattr(layer, "layer", layer) for layer in model.layers]
    layers = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.synchronized, layer.fused = True, False
    return len(layers)


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Does this process write the run's files? (Every process, except the non-chief workers of multi_worker.)"""
    return bool((strategy or tf.distribute.get_strategy()).extended.should_checkpoint)


@contextlib.contextmanager
def chief_path(path: str, strategy: tf.distribute.Strategy | None = None) -> Iterator[str]:
    """Where this process writes the file `path`: `path` itself on the chief; on another worker a path in a
    `workertemp_<id>` folder beside it, deleted when the block ends (Keras' convention for checkpoints: every worker
    runs the same saving code, which may need all of them, and only the chief's copy stays)."""
    from tf_keras.src.distribute import distributed_file_utils

    strategy = strategy or tf.distribute.get_strategy()
    try:
        yield distributed_file_utils.write_filepath(path, strategy)
    finally:
        distributed_file_utils.remove_temp_dir_with_filepath(path, strategy)
