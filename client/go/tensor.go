package optd

import (
	"encoding/binary"
	"fmt"
	"math"

	"google.golang.org/grpc/codes"

	"github.com/optd/optd/client/go/optdv1"
)

// Tensor is a named float32 tensor on the caller's side, whatever its wire encoding.
//
// Dense (Rows == nil): Values holds product(Shape) elements in row-major order; a scalar has an
// empty Shape and one value. Row-sparse (Rows != nil, even if empty): the tensor carries only the
// rows Rows of a tensor of Shape, so Values holds len(Rows) * product(Shape[1:]) elements, row
// Rows[i] at Values[i*rowSize:(i+1)*rowSize]. In a gradient, repeated rows are summed.
type Tensor struct {
	Name   string
	Shape  []int64
	Values []float32
	Rows   []int64
}

// NumElements is the number of elements Values must hold (see Tensor).
func (t Tensor) NumElements() int64 {
	n := int64(1)
	dims := t.Shape
	if t.Rows != nil {
		if len(dims) == 0 {
			return -1
		}
		dims = dims[1:]
		n = int64(len(t.Rows))
	}
	for _, d := range dims {
		n *= d
	}
	return n
}

// check reports a Tensor whose Values do not match its Shape (and Rows).
func (t Tensor) check() error {
	for i, d := range t.Shape {
		if d < 1 {
			return fmt.Errorf("tensor %q: shape[%d] = %d; every dimension must be >= 1", t.Name, i, d)
		}
	}
	if t.Rows != nil && len(t.Shape) == 0 {
		return fmt.Errorf("tensor %q: a row-sparse tensor needs rank >= 1", t.Name)
	}
	if n := t.NumElements(); int64(len(t.Values)) != n {
		return fmt.Errorf("tensor %q: %d values for shape %v%s; must be %d", t.Name, len(t.Values),
			t.Shape, rowsNote(t.Rows), n)
	}
	return nil
}

func rowsNote(rows []int64) string {
	if rows == nil {
		return ""
	}
	return fmt.Sprintf(" with %d rows", len(rows))
}

// BytesPerElement is the wire size of one element of dtype (4 for F32, 2 for BF16 and F16).
func BytesPerElement(dtype optdv1.DType) int {
	if dtype == optdv1.DType_DTYPE_BF16 || dtype == optdv1.DType_DTYPE_F16 {
		return 2
	}
	return 4
}

// Encode returns values as dtype's little-endian wire bytes. BF16 and F16 round to nearest, ties
// to even, exactly as the server does.
func Encode(values []float32, dtype optdv1.DType) []byte {
	switch dtype {
	case optdv1.DType_DTYPE_BF16:
		b := make([]byte, 2*len(values))
		for i, v := range values {
			binary.LittleEndian.PutUint16(b[2*i:], Float32ToBF16(v))
		}
		return b
	case optdv1.DType_DTYPE_F16:
		b := make([]byte, 2*len(values))
		for i, v := range values {
			binary.LittleEndian.PutUint16(b[2*i:], Float32ToF16(v))
		}
		return b
	default:
		b := make([]byte, 4*len(values))
		for i, v := range values {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
		}
		return b
	}
}

// Decode returns the float32 values of dtype's little-endian wire bytes. It fails if len(data) is
// not a multiple of the element size, or dtype is unknown.
func Decode(data []byte, dtype optdv1.DType) ([]float32, error) {
	size := BytesPerElement(dtype)
	switch dtype {
	case optdv1.DType_DTYPE_F32, optdv1.DType_DTYPE_BF16, optdv1.DType_DTYPE_F16:
	default:
		return nil, fmt.Errorf("unknown dtype %d", int32(dtype))
	}
	if len(data)%size != 0 {
		return nil, fmt.Errorf("%d bytes is not a whole number of %s elements", len(data), dtype)
	}
	out := make([]float32, len(data)/size)
	for i := range out {
		switch dtype {
		case optdv1.DType_DTYPE_BF16:
			out[i] = BF16ToFloat32(binary.LittleEndian.Uint16(data[2*i:]))
		case optdv1.DType_DTYPE_F16:
			out[i] = F16ToFloat32(binary.LittleEndian.Uint16(data[2*i:]))
		default:
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
		}
	}
	return out, nil
}

// Float32ToBF16 rounds v to bfloat16 (the upper 16 bits of a binary32), to nearest, ties to even;
// NaN stays a quiet NaN and overflow rounds to Inf.
func Float32ToBF16(v float32) uint16 {
	x := math.Float32bits(v)
	if x&0x7fffffff > 0x7f800000 {
		return uint16(x>>16) | 0x0040
	}
	return uint16((x + 0x7fff + ((x >> 16) & 1)) >> 16)
}

// BF16ToFloat32 widens a bfloat16 exactly.
func BF16ToFloat32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// Float32ToF16 rounds v to IEEE binary16, to nearest, ties to even (subnormals included); values
// of magnitude >= 65520 become Inf and NaN stays a quiet NaN.
func Float32ToF16(v float32) uint16 {
	x := math.Float32bits(v)
	sign := uint16((x >> 16) & 0x8000)
	abs := x & 0x7fffffff
	if abs >= 0x7f800000 { // Inf or NaN
		if abs > 0x7f800000 {
			return sign | 0x7c00 | 0x0200 | uint16((abs>>13)&0x3ff)
		}
		return sign | 0x7c00
	}
	if abs >= 0x477ff000 {
		return sign | 0x7c00
	}
	if abs < 0x38800000 { // an F16 subnormal or zero: a multiple of 2^-24
		scaled := float64(math.Float32frombits(abs)) * 16777216.0
		return sign | uint16(math.RoundToEven(scaled))
	}
	abs += 0xc8000fff + ((abs >> 13) & 1)
	return sign | uint16(abs>>13)
}

// F16ToFloat32 widens an IEEE binary16 exactly.
func F16ToFloat32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exponent := uint32(h>>10) & 0x1f
	mantissa := uint32(h & 0x3ff)
	switch exponent {
	case 0:
		m := float32(mantissa) * (1.0 / 16777216.0)
		if sign != 0 {
			return -m
		}
		return m
	case 31:
		return math.Float32frombits(sign | 0x7f800000 | mantissa<<13)
	}
	return math.Float32frombits(sign | (exponent+112)<<23 | mantissa<<13)
}

// ToProto encodes t as a wire Tensor in dtype. InvalidArgument if Values does not match the shape.
func ToProto(t Tensor, dtype optdv1.DType) (*optdv1.Tensor, error) {
	if err := t.check(); err != nil {
		return nil, newError("", codes.InvalidArgument, "%v", err)
	}
	p := &optdv1.Tensor{Name: t.Name, Shape: t.Shape, Dtype: dtype, Data: Encode(t.Values, dtype)}
	if t.Rows != nil {
		p.Rows = &optdv1.RowIndices{Indices: t.Rows}
	}
	return p, nil
}

// FromProto decodes a wire Tensor (any dtype, dense or row-sparse) to float32 values.
func FromProto(p *optdv1.Tensor) (Tensor, error) {
	values, err := Decode(p.GetData(), p.GetDtype())
	if err != nil {
		return Tensor{}, fmt.Errorf("tensor %q: %v", p.GetName(), err)
	}
	t := Tensor{Name: p.GetName(), Shape: p.GetShape(), Values: values}
	if p.GetRows() != nil {
		t.Rows = p.GetRows().GetIndices()
		if t.Rows == nil {
			t.Rows = []int64{}
		}
	}
	if err := t.check(); err != nil {
		return Tensor{}, err
	}
	return t, nil
}

func toProtos(op string, ts []Tensor, dtype optdv1.DType) ([]*optdv1.Tensor, error) {
	out := make([]*optdv1.Tensor, len(ts))
	for i, t := range ts {
		p, err := ToProto(t, dtype)
		if err != nil {
			e := err.(*Error)
			e.Op = op
			return nil, e
		}
		out[i] = p
	}
	return out, nil
}

func fromProtos(op string, ps []*optdv1.Tensor) ([]Tensor, error) {
	out := make([]Tensor, len(ps))
	for i, p := range ps {
		t, err := FromProto(p)
		if err != nil {
			return nil, newError(op, codes.Internal, "undecodable reply: %v", err)
		}
		out[i] = t
	}
	return out, nil
}

// Find returns the tensor named name in ts, and whether there is one.
func Find(ts []Tensor, name string) (Tensor, bool) {
	for _, t := range ts {
		if t.Name == name {
			return t, true
		}
	}
	return Tensor{}, false
}
