// Code compiled once per instruction set (CMakeLists.txt: the kernels, the forward pass and their
// table) lives in namespace GPT2GEN_ISA_NS (isa_generic, isa_avx2, ...), so that the copies, each
// built with its own compiler flags, never share a symbol: the linker could otherwise keep an
// AVX-512 copy of an inline function for the generic backend.
#pragma once

#ifndef GPT2GEN_ISA
#error "GPT2GEN_ISA must name the instruction set this file is compiled for"
#endif
#define GPT2GEN_CONCAT_(a, b) a##b
#define GPT2GEN_CONCAT(a, b) GPT2GEN_CONCAT_(a, b)
#define GPT2GEN_ISA_NS GPT2GEN_CONCAT(isa_, GPT2GEN_ISA)
#define GPT2GEN_STRINGIFY_(x) #x
#define GPT2GEN_STRINGIFY(x) GPT2GEN_STRINGIFY_(x)
