"""Keeping subscriptions live: one Connection per group of subscriptions (reader, control
messages, subscriptions, liveness, make-before-break handover), gap recovery's shared
part, and the supervisors."""
