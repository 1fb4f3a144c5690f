"""Chat platforms' webhooks: a Slack Events API bot and a Telegram bot, answering
through the deployed model. Mounted by the service at ``/webhooks``."""
