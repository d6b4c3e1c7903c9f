"""Scale-out: replicas share the subscriptions through a Kafka consumer group (membership,
sticky assignment, worker processes)."""
