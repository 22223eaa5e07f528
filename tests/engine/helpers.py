"""Stand-ins the engine tests share (tests/engine and tests/sentence): a CUDA-graph runner that replays
eagerly on CPU, and a launcher wrapper that records each kernel launch."""


class EagerReplay:
    """A stand-in for CudaGraphs on machines without a GPU: 'replay' reruns the captured function and
    writes its results into the captured outputs, which is what a real replay does to its buffers."""

    captures = 0
    warm_ups = 0

    def warm_up(self, fn):
        fn()
        self.warm_ups += 1

    def capture(self, fn):
        assert self.warm_ups > self.captures, "captured without an eager warm-up of the same batch"
        outputs = fn()
        self.captures += 1

        class Graph:
            @staticmethod
            def replay():
                for old, new in zip(_flat(outputs), _flat(fn()), strict=True):
                    old.copy_(new)

        return Graph, outputs


def _flat(outputs):
    hidden, pooled, states = outputs
    return [hidden, *([pooled] if pooled is not None else []), *(states or ())]


def counting_launcher(recorder, name, launcher):
    """`launcher`, noting ("launch", name) in recorder.events and flagging recorder.inside_launcher while it
    runs, so a TorchDispatchMode recorder tells the launches from the tensor ops around them."""

    def launch(*args, **kwargs):
        recorder.events.append(("launch", name))
        recorder.inside_launcher = True
        try:
            return launcher(*args, **kwargs)
        finally:
            recorder.inside_launcher = False

    return launch
