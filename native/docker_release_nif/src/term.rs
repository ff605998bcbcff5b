//! Any `Serialize` value as an Elixir term, so that what `image_io` returns reaches the Elixir
//! side without a mirror of its types here: a struct becomes a map with atom keys (its field
//! names, a finite set from the code), a map a map with its own keys, a sequence a list, a
//! tuple a tuple, `None` and `()` `nil`, a unit enum variant an atom, strings and paths
//! binaries. Not human-readable: a type may choose a more compact shape for it.

use rustler::types::atom;
use rustler::{Atom, Encoder, Env, Term};
use serde::ser::{self, Serialize};

/// Encode `value` in `env`.
pub fn to_term<'a, T: Serialize + ?Sized>(env: Env<'a>, value: &T) -> Result<Term<'a>, Error> {
    value.serialize(TermSerializer { env })
}

/// A value serde could not turn into a term (an atom that cannot be made).
#[derive(Debug)]
pub struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<M: std::fmt::Display>(msg: M) -> Self {
        Error(msg.to_string())
    }
}

#[derive(Clone, Copy)]
struct TermSerializer<'a> {
    env: Env<'a>,
}

fn atom(env: Env<'_>, name: &str) -> Result<Atom, Error> {
    Atom::from_str(env, name).map_err(|_| Error(format!("cannot make the atom {name:?}")))
}

/// Items collected for a list or a tuple.
struct Seq<'a> {
    env: Env<'a>,
    items: Vec<Term<'a>>,
    /// A tuple (else a list); a tagged tuple starts with the variant's atom.
    tuple: bool,
}

/// Entries collected for a map; a tagged map is `{variant, map}`.
struct Map<'a> {
    env: Env<'a>,
    map: Term<'a>,
    key: Option<Term<'a>>,
    variant: Option<Atom>,
}

impl<'a> Map<'a> {
    fn put(&mut self, key: Term<'a>, value: Term<'a>) -> Result<(), Error> {
        self.map = self
            .map
            .map_put(key, value)
            .map_err(|_| Error("a map entry could not be added".into()))?;
        Ok(())
    }

    fn done(self) -> Term<'a> {
        match self.variant {
            Some(v) => (v, self.map).encode(self.env),
            None => self.map,
        }
    }
}

impl<'a> ser::Serializer for TermSerializer<'a> {
    type Ok = Term<'a>;
    type Error = Error;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Seq<'a>;
    type SerializeMap = Map<'a>;
    type SerializeStruct = Map<'a>;
    type SerializeStructVariant = Map<'a>;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn serialize_bool(self, v: bool) -> Result<Term<'a>, Error> {
        Ok(v.encode(self.env))
    }
    fn serialize_i8(self, v: i8) -> Result<Term<'a>, Error> {
        Ok(i64::from(v).encode(self.env))
    }
    fn serialize_i16(self, v: i16) -> Result<Term<'a>, Error> {
        Ok(i64::from(v).encode(self.env))
    }
    fn serialize_i32(self, v: i32) -> Result<Term<'a>, Error> {
        Ok(i64::from(v).encode(self.env))
    }
    fn serialize_i64(self, v: i64) -> Result<Term<'a>, Error> {
        Ok(v.encode(self.env))
    }
    fn serialize_u8(self, v: u8) -> Result<Term<'a>, Error> {
        Ok(u64::from(v).encode(self.env))
    }
    fn serialize_u16(self, v: u16) -> Result<Term<'a>, Error> {
        Ok(u64::from(v).encode(self.env))
    }
    fn serialize_u32(self, v: u32) -> Result<Term<'a>, Error> {
        Ok(u64::from(v).encode(self.env))
    }
    fn serialize_u64(self, v: u64) -> Result<Term<'a>, Error> {
        Ok(v.encode(self.env))
    }
    fn serialize_f32(self, v: f32) -> Result<Term<'a>, Error> {
        Ok(f64::from(v).encode(self.env))
    }
    fn serialize_f64(self, v: f64) -> Result<Term<'a>, Error> {
        Ok(v.encode(self.env))
    }
    fn serialize_char(self, v: char) -> Result<Term<'a>, Error> {
        Ok(v.to_string().encode(self.env))
    }
    fn serialize_str(self, v: &str) -> Result<Term<'a>, Error> {
        Ok(v.encode(self.env))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Term<'a>, Error> {
        Ok(rustler::NewBinary::from_slice(self.env, v).into())
    }
    fn serialize_none(self) -> Result<Term<'a>, Error> {
        Ok(atom::nil().encode(self.env))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Term<'a>, Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Term<'a>, Error> {
        Ok(atom::nil().encode(self.env))
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Term<'a>, Error> {
        Ok(atom::nil().encode(self.env))
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Term<'a>, Error> {
        Ok(atom(self.env, variant)?.encode(self.env))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<Term<'a>, Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Term<'a>, Error> {
        let inner = value.serialize(self)?;
        Ok((atom(self.env, variant)?, inner).encode(self.env))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Seq<'a>, Error> {
        Ok(Seq {
            env: self.env,
            items: Vec::with_capacity(len.unwrap_or(0)),
            tuple: false,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq<'a>, Error> {
        Ok(Seq {
            env: self.env,
            items: Vec::with_capacity(len),
            tuple: true,
        })
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Seq<'a>, Error> {
        self.serialize_tuple(len)
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Seq<'a>, Error> {
        let mut seq = self.serialize_tuple(len + 1)?;
        seq.items.push(atom(self.env, variant)?.encode(self.env));
        Ok(seq)
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Map<'a>, Error> {
        Ok(Map {
            env: self.env,
            map: Term::map_new(self.env),
            key: None,
            variant: None,
        })
    }
    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<Map<'a>, Error> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Map<'a>, Error> {
        let mut map = self.serialize_map(Some(len))?;
        map.variant = Some(atom(self.env, variant)?);
        Ok(map)
    }
}

impl<'a> Seq<'a> {
    fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.items
            .push(value.serialize(TermSerializer { env: self.env })?);
        Ok(())
    }

    fn done(self) -> Term<'a> {
        if self.tuple {
            rustler::types::tuple::make_tuple(self.env, &self.items)
        } else {
            self.items.encode(self.env)
        }
    }
}

macro_rules! seq_impls {
    ($($trait:ident :: $method:ident),*) => {
        $(impl<'a> ser::$trait for Seq<'a> {
            type Ok = Term<'a>;
            type Error = Error;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                self.push(value)
            }
            fn end(self) -> Result<Term<'a>, Error> {
                Ok(self.done())
            }
        })*
    };
}

seq_impls!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl<'a> ser::SerializeMap for Map<'a> {
    type Ok = Term<'a>;
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.key = Some(key.serialize(TermSerializer { env: self.env })?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let key = self
            .key
            .take()
            .ok_or_else(|| Error("a map value without its key".into()))?;
        let value = value.serialize(TermSerializer { env: self.env })?;
        self.put(key, value)
    }
    fn end(self) -> Result<Term<'a>, Error> {
        Ok(self.done())
    }
}

macro_rules! struct_impls {
    ($($trait:ident),*) => {
        $(impl<'a> ser::$trait for Map<'a> {
            type Ok = Term<'a>;
            type Error = Error;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), Error> {
                let key = atom(self.env, key)?.encode(self.env);
                let value = value.serialize(TermSerializer { env: self.env })?;
                self.put(key, value)
            }
            fn end(self) -> Result<Term<'a>, Error> {
                Ok(self.done())
            }
        })*
    };
}

struct_impls!(SerializeStruct, SerializeStructVariant);
