"""The human-review queue: items to rate, compare or correct, leased to
reviewers, their reviews, agreement between reviewers, and feedback exported
back to the data service as dataset versions."""
