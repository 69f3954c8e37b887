"""One package per studio tab."""
