"""Avro: compiled writers, record encoders and schemas, the schema registry client."""
