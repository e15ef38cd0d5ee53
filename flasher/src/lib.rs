//! Flashing backends behind one trait.
