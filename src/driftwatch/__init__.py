"""driftwatch: keeps a fine-tuned LLM healthy in production.

Public names are listed in ``__all__``; everything else is internal. Heavy libraries (torch, transformers,
peft, evidently) are never imported from here.
"""

from driftwatch.errors import (
    BrokerUnavailable,
    CommitError,
    ConfigError,
    ContractError,
    DeadLetterError,
    DriftwatchError,
    IngestError,
    TopicLayoutError,
)
from driftwatch.events import FeedbackEvent, InferenceEvent, Reason, Rejected, decode, encode

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "BrokerUnavailable",
    "CommitError",
    "ConfigError",
    "ContractError",
    "DeadLetterError",
    "DriftwatchError",
    "FeedbackEvent",
    "InferenceEvent",
    "IngestError",
    "Reason",
    "Rejected",
    "TopicLayoutError",
    "decode",
    "encode",
]
