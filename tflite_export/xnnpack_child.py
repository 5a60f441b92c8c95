"""What LiteRT's XNNPACK delegate makes of a model, computed in a child process (`python -I -c` running this file).

LiteRT applies XNNPACK when an interpreter allocates its tensors; when XNNPACK then refuses to create one of the
delegated operators (parameters outside its kernels' range, e.g. a convolution whose requantization scale is >= 256,
or an ADD whose output scale is 10^6 times its inputs'), the delegate's error path frees memory twice and the process
dies with SIGABRT ("free(): double free detected"), whatever the caller catches. So the first interpreter built on a
file runs here, in a process of its own: a native crash becomes an exit status the parent reports in one line.

Standard library and ai_edge_litert only: the child must not import TensorFlow (seconds) nor this package (whose
`inspect` module would shadow the standard library's if run from the folder).

Prints one JSON object: {"partitions", "undelegated", "undelegated_edge"} or {"error": "..."} for a model LiteRT
refuses with an ordinary error. See tflite_export.verify for how the partitions are read.
"""

import collections
import json
import sys


def delegation(path: str) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=path, num_threads=1)
        interpreter.allocate_tensors()
    except Exception as exc:  # noqa: BLE001  (LiteRT raises RuntimeError/ValueError with C++ messages)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return {"error": lines[0] if lines else type(exc).__name__}
    w = interpreter._interpreter  # noqa: SLF001 - the pybind wrapper: NodeName/NodeInputs/NodeOutputs cover delegates
    n = w.NumNodes()
    names = [w.NodeName(i) for i in range(n)]
    node_inputs = [[int(t) for t in w.NodeInputs(i)] for i in range(n)]
    node_outputs = [[int(t) for t in w.NodeOutputs(i)] for i in range(n)]
    delegates = [i for i in range(n) if names[i] == "DELEGATE"]
    originals = [i for i in range(n) if names[i] != "DELEGATE"]
    producer: dict = {}
    consumers: dict = collections.defaultdict(list)
    for i in originals:
        for t in node_outputs[i]:
            producer[t] = i
        for t in node_inputs[i]:
            consumers[t].append(i)
    delegated: set = set()
    for d in delegates:
        boundary = set(node_inputs[d])
        stack = list(node_outputs[d])
        seen: set = set()
        while stack:
            t = stack.pop()
            if t < 0 or t in seen or t in boundary:
                continue
            seen.add(t)
            p = producer.get(t)
            if p is None or p in delegated:
                continue
            delegated.add(p)
            stack.extend(node_inputs[p])
    undelegated = [i for i in originals if i not in delegated]

    def reaches_delegated(start: int, forward: bool) -> bool:
        stack, seen = [start], {start}
        while stack:
            node = stack.pop()
            tensors = node_outputs[node] if forward else node_inputs[node]
            nxt = [c for t in tensors for c in consumers.get(t, [])] if forward else \
                [producer[t] for t in tensors if t in producer]
            for m in nxt:
                if m in delegated:
                    return True
                if m not in seen:
                    seen.add(m)
                    stack.append(m)
        return False

    edge = [i for i in undelegated if not (reaches_delegated(i, True) and reaches_delegated(i, False))]
    return {"partitions": len(delegates),
            "undelegated": dict(collections.Counter(names[i] for i in undelegated)),
            "undelegated_edge": dict(collections.Counter(names[i] for i in edge))}


if __name__ == "__main__":
    print(json.dumps(delegation(sys.argv[1])))
