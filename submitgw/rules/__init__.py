"""Pure decisions: given facts, say yes or no (with the reply). No I/O, no clock reads."""
