"""Console noise policy shared by the CLI and the flow entry points: our own progress at INFO,
third-party packages at WARNING, and their deprecation chatter hidden, unless ``-v``."""
from __future__ import annotations

import logging
import warnings

OWN_LOGGERS = ("core", "registration", "data", "detection", "tasks", "pipeline", "flows", "rgb2thermal_cli", "benchmarks")


def configure_logging(verbose: int) -> None:
    """Our own loggers at INFO (stage progress, fallbacks); third-party at WARNING unless -v."""
    logging.basicConfig(level=logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    if verbose == 0:
        # deprecation notices that third-party packages raise about each other (torch.cuda.amp in
        # mmdet, torch.jit in sam2): nothing a user of this tool can act on
        for category in (FutureWarning, UserWarning):   # e.g. torch.meshgrid's indexing notice, every training
            warnings.filterwarnings("ignore", category=category, module=r"(mmdet|mmengine|mmcv|torch|sam2)(\.|$)")
