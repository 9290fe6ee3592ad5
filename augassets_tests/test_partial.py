"""A step over several partitions of which one fails: the others are recorded, the failure is named."""

import dagster as dg
import pytest

from augassets.assets.partial import fail_partially
from augassets.tags import PARTITION_RANGE_END_TAG, PARTITION_RANGE_START_TAG


def test_a_range_run_records_the_finished_partitions_and_names_the_failed_one():
    letters = dg.StaticPartitionsDefinition(["a", "b", "c"])

    @dg.asset(partitions_def=letters, backfill_policy=dg.BackfillPolicy.single_run())
    def letters_asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        finished, failures = {}, {}
        for key in context.partition_keys:
            if key == "b":
                failures[key] = "b is bad input"
            else:
                finished[key] = {"rows": 1}
        if failures:
            fail_partially(context, finished, failures)
        return dg.MaterializeResult()

    instance = dg.DagsterInstance.ephemeral()
    range_tags = {
        PARTITION_RANGE_START_TAG: "a",
        PARTITION_RANGE_END_TAG: "c",
    }  # one run over the range, as the runner runs it
    result = dg.materialize([letters_asset], instance=instance, tags=range_tags, raise_on_error=False)
    assert not result.success
    failure = next(event for event in result.all_events if event.is_step_failure).step_failure_data.user_failure_data
    assert failure.description == "1 of 3 partitions failed, the others are materialized: b: b is bad input"
    assert failure.metadata["failed"].value == "- `b`: b is bad input"
    recorded = instance.get_materialized_partitions(dg.AssetKey("letters_asset"))
    assert recorded == {"a", "c"}, "a rerun runs only the failed partition"


def test_more_failures_than_it_names_say_so():
    class Context:
        asset_key = dg.AssetKey("x")
        partition_keys = [str(i) for i in range(5)]
        events = []

        def log_event(self, event):
            self.events.append(event)

    with pytest.raises(dg.Failure) as failed:
        fail_partially(Context(), {}, {str(i): "bad" for i in range(5)}, noun="fine-tuning runs")
    assert (
        failed.value.description
        == "5 of 5 fine-tuning runs failed, the others are materialized: 0: bad; 1: bad; 2: bad …"
    )
