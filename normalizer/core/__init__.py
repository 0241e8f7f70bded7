"""The sans-I/O core: frames and time in, frames, events and counters out. No sockets."""
