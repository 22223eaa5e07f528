"""Import paths of the flat layout (fastbert 0.1: `fastbert.model`, `fastbert.workers`, ...) kept working for
one release: importing one gives its new module and a DeprecationWarning naming the new path.

One finder on sys.meta_path serves the whole table, so no stub file stands in the package for each old name.
Old names that are packages now (`fastbert.cli`, `fastbert.corpus`, `fastbert.verify`) are not in it."""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "fastbert.families": "fastbert.checkpoint.families",
    "fastbert.config": "fastbert.checkpoint.config",
    "fastbert.weights": "fastbert.checkpoint.weights",
    "fastbert.hub": "fastbert.checkpoint.hub",
    "fastbert.tokenizer": "fastbert.checkpoint.tokenizer",
    "fastbert.model": "fastbert.api",  # FastBertModel, with encode and start_pool
    "fastbert.packing": "fastbert.engine.packing",
    "fastbert.backends": "fastbert.engine.backends",
    "fastbert.gemm": "fastbert.engine.gemm",
    "fastbert.graphs": "fastbert.engine.graphs",
    "fastbert.staging": "fastbert.engine.staging",
    "fastbert.outputs": "fastbert.engine.outputs",
    "fastbert.pipeline": "fastbert.sentence.pipeline",
    "fastbert.sentence_modules": "fastbert.sentence.modules",
    "fastbert.pooling": "fastbert.sentence.pooling",
    "fastbert.sentences": "fastbert.sentence.stream",
    "fastbert.workers": "fastbert.parallel.pool",
    "fastbert.worker_process": "fastbert.parallel.worker",
    "fastbert.ray": "fastbert.parallel.ray",
    "fastbert.records": "fastbert.corpus.readers",
    "fastbert.sinks": "fastbert.corpus.writers",
    "fastbert.corpus_run": "fastbert.corpus.run",
    "fastbert.cli_common": "fastbert.cli.common",
    "fastbert.cli_encode": "fastbert.cli.encode",
    "fastbert.textio": "fastbert.cli.textio",
    "fastbert.reference": "fastbert.verify.reference",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name not in MOVED:
            return None
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; the old path goes away in the next release",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):
        """Nothing to run: the module is the new one, already executed (the import system has filed it
        under the old name in sys.modules and kept its own __name__ and __spec__)."""


_FINDER = _Alias()


def install():
    if _FINDER not in sys.meta_path:
        sys.meta_path.append(_FINDER)
