//! The Sparkplug B datatype codes (spec 6.4.16) and which protobuf value field
//! carries each one.
//!
//! Invariant: `DataType::from_code(c).map(|d| d.code()) == Some(c)` for every
//! c in 0..=34, and `from_code` is `None` for anything else
//! ([tck-id-payloads-metric-datatype-value]).

use std::fmt;

/// A Sparkplug B datatype, numbered exactly as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum DataType {
    Unknown = 0,
    Int8 = 1,
    Int16 = 2,
    Int32 = 3,
    Int64 = 4,
    UInt8 = 5,
    UInt16 = 6,
    UInt32 = 7,
    UInt64 = 8,
    Float = 9,
    Double = 10,
    Boolean = 11,
    String = 12,
    DateTime = 13,
    Text = 14,
    Uuid = 15,
    DataSet = 16,
    Bytes = 17,
    File = 18,
    Template = 19,
    PropertySet = 20,
    PropertySetList = 21,
    Int8Array = 22,
    Int16Array = 23,
    Int32Array = 24,
    Int64Array = 25,
    UInt8Array = 26,
    UInt16Array = 27,
    UInt32Array = 28,
    UInt64Array = 29,
    FloatArray = 30,
    DoubleArray = 31,
    BooleanArray = 32,
    StringArray = 33,
    DateTimeArray = 34,
}

/// Every datatype in code order; index = code.
pub const ALL: [DataType; 35] = [
    DataType::Unknown,
    DataType::Int8,
    DataType::Int16,
    DataType::Int32,
    DataType::Int64,
    DataType::UInt8,
    DataType::UInt16,
    DataType::UInt32,
    DataType::UInt64,
    DataType::Float,
    DataType::Double,
    DataType::Boolean,
    DataType::String,
    DataType::DateTime,
    DataType::Text,
    DataType::Uuid,
    DataType::DataSet,
    DataType::Bytes,
    DataType::File,
    DataType::Template,
    DataType::PropertySet,
    DataType::PropertySetList,
    DataType::Int8Array,
    DataType::Int16Array,
    DataType::Int32Array,
    DataType::Int64Array,
    DataType::UInt8Array,
    DataType::UInt16Array,
    DataType::UInt32Array,
    DataType::UInt64Array,
    DataType::FloatArray,
    DataType::DoubleArray,
    DataType::BooleanArray,
    DataType::StringArray,
    DataType::DateTimeArray,
];

impl DataType {
    /// The wire code.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The datatype for a wire code, `None` when the code is not in the spec.
    pub fn from_code(code: u32) -> Option<DataType> {
        ALL.get(usize::try_from(code).ok()?).copied()
    }

    /// The name used in the spec and in our config files (`Int32`, `FloatArray`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DataType::Unknown => "Unknown",
            DataType::Int8 => "Int8",
            DataType::Int16 => "Int16",
            DataType::Int32 => "Int32",
            DataType::Int64 => "Int64",
            DataType::UInt8 => "UInt8",
            DataType::UInt16 => "UInt16",
            DataType::UInt32 => "UInt32",
            DataType::UInt64 => "UInt64",
            DataType::Float => "Float",
            DataType::Double => "Double",
            DataType::Boolean => "Boolean",
            DataType::String => "String",
            DataType::DateTime => "DateTime",
            DataType::Text => "Text",
            DataType::Uuid => "UUID",
            DataType::DataSet => "DataSet",
            DataType::Bytes => "Bytes",
            DataType::File => "File",
            DataType::Template => "Template",
            DataType::PropertySet => "PropertySet",
            DataType::PropertySetList => "PropertySetList",
            DataType::Int8Array => "Int8Array",
            DataType::Int16Array => "Int16Array",
            DataType::Int32Array => "Int32Array",
            DataType::Int64Array => "Int64Array",
            DataType::UInt8Array => "UInt8Array",
            DataType::UInt16Array => "UInt16Array",
            DataType::UInt32Array => "UInt32Array",
            DataType::UInt64Array => "UInt64Array",
            DataType::FloatArray => "FloatArray",
            DataType::DoubleArray => "DoubleArray",
            DataType::BooleanArray => "BooleanArray",
            DataType::StringArray => "StringArray",
            DataType::DateTimeArray => "DateTimeArray",
        }
    }

    /// Parses a spec name, case-insensitively (`int32`, `UUID`, `Uuid`).
    pub fn from_name(name: &str) -> Option<DataType> {
        ALL.iter().copied().find(|d| d.name().eq_ignore_ascii_case(name))
    }

    /// Basic types: the ones a DataSet column, a template parameter or a
    /// scalar property may hold (spec "Sparkplug Basic Data Types", 1–14 and UUID).
    pub fn is_basic(self) -> bool {
        matches!(self.code(), 1..=15)
    }

    /// Types a PropertyValue may hold: the basic types plus PropertySet and
    /// PropertySetList ([tck-id-payloads-metric-propertyvalue-type-value]).
    pub fn is_property_type(self) -> bool {
        self.is_basic() || matches!(self, DataType::PropertySet | DataType::PropertySetList)
    }

    /// Types a Metric may hold: everything but Unknown and the property-only types.
    pub fn is_metric_type(self) -> bool {
        !matches!(
            self,
            DataType::Unknown | DataType::PropertySet | DataType::PropertySetList
        )
    }

    /// Numeric scalars, the ones a deadband or a rollup applies to.
    pub fn is_numeric(self) -> bool {
        matches!(self.code(), 1..=10)
    }

    /// The array datatypes (Int8Array … DateTimeArray).
    pub fn is_array(self) -> bool {
        matches!(self.code(), 22..=34)
    }

    /// The element type of an array datatype.
    pub fn element(self) -> Option<DataType> {
        Some(match self {
            DataType::Int8Array => DataType::Int8,
            DataType::Int16Array => DataType::Int16,
            DataType::Int32Array => DataType::Int32,
            DataType::Int64Array => DataType::Int64,
            DataType::UInt8Array => DataType::UInt8,
            DataType::UInt16Array => DataType::UInt16,
            DataType::UInt32Array => DataType::UInt32,
            DataType::UInt64Array => DataType::UInt64,
            DataType::FloatArray => DataType::Float,
            DataType::DoubleArray => DataType::Double,
            DataType::BooleanArray => DataType::Boolean,
            DataType::StringArray => DataType::String,
            DataType::DateTimeArray => DataType::DateTime,
            _ => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // [tck-id-payloads-metric-datatype-value]
    #[test]
    fn every_code_round_trips_and_codes_past_34_are_rejected() {
        for code in 0..=34u32 {
            let dt = DataType::from_code(code).expect("codes 0..=34 are defined");
            assert_eq!(dt.code(), code);
            assert_eq!(DataType::from_name(dt.name()), Some(dt));
        }
        assert_eq!(DataType::from_code(35), None);
        assert_eq!(DataType::from_code(u32::MAX), None);
    }

    #[test]
    fn property_values_allow_basic_types_and_property_sets_only() {
        assert!(DataType::Int32.is_property_type());
        assert!(DataType::PropertySetList.is_property_type());
        assert!(!DataType::DataSet.is_property_type());
        assert!(!DataType::Int32Array.is_property_type());
        assert!(!DataType::PropertySet.is_metric_type());
    }
}
