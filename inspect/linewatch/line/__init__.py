"""The line as a whole: the supervisor (composition root) and the bootstrap every child process shares."""
