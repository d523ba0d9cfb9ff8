"""acquire: one process per camera — its source, triggers, the frame ring it writes, its control socket."""
