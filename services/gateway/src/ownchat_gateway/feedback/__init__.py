"""The feedback loop: opt-in capture of live chats (scrubbed of personal data before
anything is stored), thumbs up or down on a reply, and captured chats routed into the
evaluator's review queue, thumbs-down first."""
