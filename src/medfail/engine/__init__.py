"""Engine: the only place that schedules work (batching, seeding, conditions, predictions)."""
