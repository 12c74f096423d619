"""The audio front end: decoding as each original does, vocal separation, encoders, per-frame features, emotion."""
