"""Run and asset tag names shared by the asset layer and the runner.

A leaf module: the assets and resources read these names, the headless runner writes them, and
neither layer has to import the other for a string.
"""

# Dagster's own run tags: a run of one partition, and a run over a range of partition keys (one run,
# many partitions).
PARTITION_TAG = "dagster/partition"
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"

# Which assets a headless run materialized (a run tag the runner sets).
ASSETS_TAG = "augassets/assets"

# An asset tag naming the partition dimension whose values are the asset's units of work (the asset
# computes once per value, for all its partitions of that value): the runner's chunks then hold whole
# values, one chunk per value, since two chunks sharing a value would each do its work. The first
# dimension only.
CHUNK_BY_TAG = "augassets/chunk_by"
