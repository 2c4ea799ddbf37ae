"""The version of the results files deadzone writes and reads.

Version 1 files have no ``schema_version`` key (one crystal rank, verdicts without a margin);
version 2 adds the margin, the cost as a share of the fine-tuning gain, Holm-adjusted
intervals and rank sweeps.
"""

SCHEMA_VERSION = 2
