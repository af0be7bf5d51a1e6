// The library's one error format for a bad argument: "ARG: expected X, got
// Y" as a flashattn::Error (Python: ValueError). Every check of every
// backend reports through it.
#pragma once

#include <string>

#include "flashattn/flashattn.h"

namespace flashattn::detail {

[[noreturn]] inline void fail(const std::string& arg, const std::string& expected, const std::string& actual) {
  throw Error(arg + ": expected " + expected + ", got " + actual);
}

}  // namespace flashattn::detail
