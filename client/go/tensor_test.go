package optd_test

import (
	"math"
	"testing"

	optd "github.com/optd/optd/client/go"
	"github.com/optd/optd/client/go/optdv1"
)

func TestEncodeDecodeF32(t *testing.T) {
	values := []float32{0, 1, -2.5, float32(math.Inf(1)), math.SmallestNonzeroFloat32, math.MaxFloat32}
	b := optd.Encode(values, optdv1.DType_DTYPE_F32)
	if len(b) != 4*len(values) || b[4] != 0x00 || b[7] != 0x3f { // 1.0 = 0x3f800000, little-endian
		t.Fatalf("Encode(F32) = % x", b)
	}
	got, err := optd.Decode(b, optdv1.DType_DTYPE_F32)
	if err != nil || !equal(got, values) {
		t.Fatalf("Decode(Encode(%v)) = %v, %v", values, got, err)
	}
	if _, err := optd.Decode(b[:5], optdv1.DType_DTYPE_F32); err == nil {
		t.Error("Decode(5 bytes, F32) did not fail")
	}
	if _, err := optd.Decode(b, optdv1.DType(7)); err == nil {
		t.Error("Decode(dtype 7) did not fail")
	}
}

func TestHalfPrecision(t *testing.T) {
	for _, c := range []struct {
		v         float32
		bf16, f16 uint16
		bf16Back  float32
		f16Back   float32
	}{
		{1, 0x3f80, 0x3c00, 1, 1},
		{-2, 0xc000, 0xc000, -2, -2},
		{0.1, 0x3dcd, 0x2e66, 0.10009765625, 0.0999755859375},
		{65520, 0x4780, 0x7c00, 65536, float32(math.Inf(1))}, // F16 overflow
		{65504, 0x4780, 0x7bff, 65536, 65504},
		{5.960464477539063e-08, 0x3380, 0x0001, 5.960464477539063e-08, 5.960464477539063e-08}, // 2^-24
		{1 + 1.0/256, 0x3f80, 0x3c04, 1, 1 + 1.0/256},                                         // BF16 tie to even
	} {
		if got := optd.Float32ToBF16(c.v); got != c.bf16 {
			t.Errorf("Float32ToBF16(%v) = %#04x, want %#04x", c.v, got, c.bf16)
		}
		if got := optd.Float32ToF16(c.v); got != c.f16 {
			t.Errorf("Float32ToF16(%v) = %#04x, want %#04x", c.v, got, c.f16)
		}
		if got := optd.BF16ToFloat32(c.bf16); got != c.bf16Back {
			t.Errorf("BF16ToFloat32(%#04x) = %v, want %v", c.bf16, got, c.bf16Back)
		}
		if got := optd.F16ToFloat32(c.f16); got != c.f16Back {
			t.Errorf("F16ToFloat32(%#04x) = %v, want %v", c.f16, got, c.f16Back)
		}
	}
	nan := float32(math.NaN())
	if h := optd.Float32ToBF16(nan); !math.IsNaN(float64(optd.BF16ToFloat32(h))) {
		t.Errorf("BF16 NaN -> %#04x", h)
	}
	if h := optd.Float32ToF16(nan); !math.IsNaN(float64(optd.F16ToFloat32(h))) {
		t.Errorf("F16 NaN -> %#04x", h)
	}
	// Every F16 value survives F16 -> F32 -> F16.
	for h := 0; h < 1<<16; h++ {
		f := optd.F16ToFloat32(uint16(h))
		if math.IsNaN(float64(f)) {
			continue
		}
		if back := optd.Float32ToF16(f); back != uint16(h) {
			t.Fatalf("F16 %#04x -> %v -> %#04x", h, f, back)
		}
	}
}

func TestToProtoFromProto(t *testing.T) {
	dense := optd.Tensor{Name: "m", Shape: []int64{2, 3}, Values: []float32{1, 2, 3, 4, 5, 6}}
	for _, dt := range []optdv1.DType{optdv1.DType_DTYPE_F32, optdv1.DType_DTYPE_BF16, optdv1.DType_DTYPE_F16} {
		p, err := optd.ToProto(dense, dt)
		if err != nil || len(p.Data) != 6*optd.BytesPerElement(dt) || p.Rows != nil {
			t.Fatalf("ToProto(%v) = %v, %v", dt, p, err)
		}
		back, err := optd.FromProto(p)
		if err != nil || back.Name != "m" || !equal(back.Values, dense.Values) || back.Rows != nil {
			t.Fatalf("FromProto(%v) = %+v, %v", dt, back, err)
		}
	}
	sparse := optd.Tensor{Name: "e", Shape: []int64{10, 2}, Rows: []int64{7, 3}, Values: []float32{1, 2, 3, 4}}
	p, err := optd.ToProto(sparse, optdv1.DType_DTYPE_F32)
	if err != nil || p.Rows == nil || len(p.Rows.Indices) != 2 {
		t.Fatalf("ToProto(sparse) = %v, %v", p, err)
	}
	back, err := optd.FromProto(p)
	if err != nil || len(back.Rows) != 2 || back.Rows[0] != 7 || !equal(back.Values, sparse.Values) {
		t.Fatalf("FromProto(sparse) = %+v, %v", back, err)
	}
	empty := optd.Tensor{Name: "e", Shape: []int64{10, 2}, Rows: []int64{}, Values: nil}
	if p, err := optd.ToProto(empty, optdv1.DType_DTYPE_F32); err != nil || p.Rows == nil {
		t.Fatalf("ToProto(no rows) = %v, %v", p, err)
	}
	for _, bad := range []optd.Tensor{
		{Name: "x", Shape: []int64{3}, Values: []float32{1}},
		{Name: "x", Shape: []int64{0}, Values: nil},
		{Name: "x", Rows: []int64{0}, Values: []float32{1}},
		{Name: "x", Shape: []int64{4, 2}, Rows: []int64{1}, Values: []float32{1}},
	} {
		if _, err := optd.ToProto(bad, optdv1.DType_DTYPE_F32); optd.Code(err) != 3 {
			t.Errorf("ToProto(%+v) = %v, want INVALID_ARGUMENT", bad, err)
		}
	}
	scalar := optd.Tensor{Name: "s", Values: []float32{3}}
	if scalar.NumElements() != 1 {
		t.Errorf("scalar NumElements = %d", scalar.NumElements())
	}
}
