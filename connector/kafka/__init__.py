"""From an event to an acknowledged Kafka record: publisher, router, sink, producers,
spool, topics, checkpoints, and reading topics back (tail, book)."""
