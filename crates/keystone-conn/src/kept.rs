//! [`Kept`]: a connection's rarely needed state, out of line.
//!
//! A worker makes every connection slot at start and keeps it for its
//! life, so each byte of [`Connection`](crate::Connection) is paid once per
//! slot — 10,240 times in a server sized for 10k connections — whether or
//! not a slot ever serves a file, a stream or a proxied body. The state
//! only those answers use (the response's tail, a streamed upload) is the
//! largest part of a connection, so it lives behind a pointer: boxed on a
//! slot's first need and kept for the slot's life (as the TLS facts are),
//! never freed between requests, so steady state allocates nothing and a
//! slot that only ever answers from its buffer pays one pointer.

use std::ops::Deref;

/// A value whose empty state needs no storage: what a [`Kept`] reads as
/// before its box is made.
pub(crate) trait Vacant: Sized + 'static {
    /// The empty value, as a constant the unmade box reads as.
    const VACANT: &'static Self;
    /// The empty value, to store.
    fn vacant() -> Self;
}

impl<T: 'static> Vacant for Option<T> {
    const VACANT: &'static Self = &None;
    fn vacant() -> Self {
        None
    }
}

/// A `T` boxed on first need and kept: reads as [`Vacant::VACANT`] until
/// something is stored, then keeps its box (emptied, never freed) until
/// the connection is dropped. Mutable access goes through [`Kept::get_mut`]
/// (nothing to change in an unmade box) or [`Kept::set`] (which makes it),
/// so a read or a match on the hot path never allocates.
#[derive(Debug)]
pub(crate) struct Kept<T: Vacant>(Option<Box<T>>);

impl<T: Vacant> Kept<T> {
    /// Nothing stored, nothing allocated.
    pub(crate) const fn new() -> Kept<T> {
        Kept(None)
    }

    /// The stored value, if the box was ever made (it may hold the empty
    /// value again).
    pub(crate) fn get_mut(&mut self) -> Option<&mut T> {
        self.0.as_deref_mut()
    }

    /// Stores `value`, making the box on this slot's first need.
    pub(crate) fn set(&mut self, value: T) {
        match &mut self.0 {
            Some(stored) => **stored = value,
            None => self.0 = Some(Box::new(value)),
        }
    }

    /// Takes the value out, leaving the empty one (the box stays).
    pub(crate) fn take(&mut self) -> T {
        match &mut self.0 {
            Some(stored) => std::mem::replace(&mut **stored, T::vacant()),
            None => T::vacant(),
        }
    }

    /// Empties it (the box stays).
    pub(crate) fn clear(&mut self) {
        if let Some(stored) = &mut self.0 {
            **stored = T::vacant();
        }
    }

    /// The box was made (for tests of what a slot costs).
    #[cfg(test)]
    pub(crate) fn is_made(&self) -> bool {
        self.0.is_some()
    }
}

impl<U: 'static> Kept<Option<U>> {
    /// The value inside, mutably (as [`Option::as_mut`]).
    pub(crate) fn as_mut(&mut self) -> Option<&mut U> {
        self.get_mut().and_then(Option::as_mut)
    }
}

impl<T: Vacant> Deref for Kept<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.as_deref().unwrap_or(T::VACANT)
    }
}

#[cfg(test)]
mod tests {
    use super::Kept;

    #[test]
    fn reads_empty_until_set_then_keeps_its_box_through_take_and_clear() {
        let mut kept: Kept<Option<String>> = Kept::new();
        assert!(kept.is_none() && !kept.is_made());
        assert!(kept.get_mut().is_none() && kept.as_mut().is_none());
        assert_eq!(kept.take(), None);
        kept.clear();
        assert!(!kept.is_made(), "reading, taking, clearing make nothing");

        kept.set(Some("a".to_string()));
        let at: *const Option<String> = &*kept;
        assert_eq!(kept.as_deref(), Some("a"));
        kept.as_mut().unwrap().push('b');
        assert_eq!(kept.take().as_deref(), Some("ab"));
        assert!(kept.is_none() && kept.is_made());

        kept.set(Some("c".to_string()));
        assert_eq!(&*kept as *const _, at, "the same box, not a new one");
        kept.clear();
        assert!(kept.is_none());
        assert_eq!(&*kept as *const _, at);
    }
}
