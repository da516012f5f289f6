//! Test guests and platform checks for hvprobe tests.
