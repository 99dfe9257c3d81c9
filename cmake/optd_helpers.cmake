# Build helpers shared by every folder.
#
# optd_cc_library(NAME <name> SRCS ... [PUBLIC_DEPS ...] [DEPS ...])
#   A static library optd_<name>, aliased optd::<name>. PUBLIC_DEPS are what the library's headers
#   need (its callers get them too); DEPS are the implementation's own (PRIVATE). Sources include
#   headers by their path from the repository root ("server/session/session.h"), so the root is on
#   every target's include path; which header may include which is checked by the layering test
#   (tests/layering_test.py), not by the compiler.
#
# optd_header_library(NAME <name> [DEPS ...])
#   A header-only INTERFACE library optd::<name>; DEPS are its headers' dependencies.
#
# optd_cc_test(NAME <name> SRCS ... DEPS ... [LABELS ...])
#   A gtest binary (gmock and gtest_main linked) registered with ctest as one entry.
#
# optd_proto_library(NAME <name> PROTO <file.proto> IMPORT_DIR <dir> [GRPC] [PYTHON_OUT <dir>])
#   The one place protoc runs for C++ (and Python): generates <file>.pb.{h,cc} (and, with GRPC,
#   <file>.grpc.pb.{h,cc}) under ${CMAKE_CURRENT_BINARY_DIR}/gen, keeping the path of PROTO
#   relative to IMPORT_DIR, and builds them into optd::<name>, whose users include them as
#   "<path relative to IMPORT_DIR>.pb.h". With PYTHON_OUT, also writes the Python modules (and
#   .pyi stubs, and with GRPC the _pb2_grpc module) there, as target optd_<name>_python (built by
#   default).
include(GoogleTest)
get_filename_component(OPTD_SOURCE_ROOT "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)

function(optd_cc_library)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;DEPS;PUBLIC_DEPS" ${ARGN})
  add_library(optd_${ARG_NAME} STATIC ${ARG_SRCS})
  add_library(optd::${ARG_NAME} ALIAS optd_${ARG_NAME})
  target_include_directories(optd_${ARG_NAME} PUBLIC ${OPTD_SOURCE_ROOT})
  target_link_libraries(optd_${ARG_NAME} PUBLIC ${ARG_PUBLIC_DEPS} PRIVATE ${ARG_DEPS})
endfunction()

function(optd_header_library)
  cmake_parse_arguments(ARG "" "NAME" "DEPS" ${ARGN})
  add_library(optd_${ARG_NAME} INTERFACE)
  add_library(optd::${ARG_NAME} ALIAS optd_${ARG_NAME})
  target_include_directories(optd_${ARG_NAME} INTERFACE ${OPTD_SOURCE_ROOT})
  target_link_libraries(optd_${ARG_NAME} INTERFACE ${ARG_DEPS})
endfunction()

function(optd_cc_test)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;DEPS;LABELS" ${ARGN})
  if(NOT OPTD_BUILD_TESTS OR OPTD_SKIP_TEST_${ARG_NAME})
    return()
  endif()
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} optd::status_matchers GTest::gmock
                                            GTest::gtest_main)
  # One ctest entry per binary (not per TEST): keeps process start-up cost low on 2 cores.
  add_test(NAME ${ARG_NAME} COMMAND ${ARG_NAME})
  set_tests_properties(${ARG_NAME} PROPERTIES LABELS "unit;${ARG_LABELS}" TIMEOUT 600)
endfunction()

# protoc and its plugins, found once.
if(TARGET gRPC::grpc_cpp_plugin)
  get_target_property(OPTD_GRPC_CPP_PLUGIN gRPC::grpc_cpp_plugin IMPORTED_LOCATION_NONE)
endif()
if(NOT OPTD_GRPC_CPP_PLUGIN OR NOT EXISTS "${OPTD_GRPC_CPP_PLUGIN}")
  find_program(OPTD_GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)
endif()
find_program(OPTD_GRPC_PYTHON_PLUGIN grpc_python_plugin REQUIRED)

function(optd_proto_library)
  cmake_parse_arguments(ARG "GRPC" "NAME;PROTO;IMPORT_DIR;PYTHON_OUT" "" ${ARGN})
  get_filename_component(proto "${ARG_PROTO}" ABSOLUTE)
  file(RELATIVE_PATH rel "${ARG_IMPORT_DIR}" "${proto}")
  string(REGEX REPLACE "\\.proto$" "" stem "${rel}")
  set(gen ${CMAKE_CURRENT_BINARY_DIR}/gen)
  file(MAKE_DIRECTORY ${gen})
  set(cpp_out ${gen}/${stem}.pb.cc ${gen}/${stem}.pb.h)
  set(cpp_args --cpp_out=${gen})
  if(ARG_GRPC)
    list(APPEND cpp_out ${gen}/${stem}.grpc.pb.cc ${gen}/${stem}.grpc.pb.h)
    list(APPEND cpp_args --grpc_out=${gen} --plugin=protoc-gen-grpc=${OPTD_GRPC_CPP_PLUGIN})
  endif()
  add_custom_command(
    OUTPUT ${cpp_out}
    COMMAND ${Protobuf_PROTOC_EXECUTABLE} --proto_path=${ARG_IMPORT_DIR} ${cpp_args} ${proto}
    DEPENDS ${proto}
    COMMENT "protoc (C++) ${rel}")
  add_library(optd_${ARG_NAME} STATIC ${cpp_out})
  add_library(optd::${ARG_NAME} ALIAS optd_${ARG_NAME})
  target_include_directories(optd_${ARG_NAME} PUBLIC ${gen})
  target_link_libraries(optd_${ARG_NAME} PUBLIC protobuf::libprotobuf)
  if(ARG_GRPC)
    target_link_libraries(optd_${ARG_NAME} PUBLIC gRPC::grpc++)
  endif()

  if(ARG_PYTHON_OUT)
    file(MAKE_DIRECTORY ${ARG_PYTHON_OUT})
    set(py_out ${ARG_PYTHON_OUT}/${stem}_pb2.py)
    set(py_args --python_out=${ARG_PYTHON_OUT} --pyi_out=${ARG_PYTHON_OUT})
    if(ARG_GRPC)
      list(APPEND py_out ${ARG_PYTHON_OUT}/${stem}_pb2_grpc.py)
      list(APPEND py_args --grpc_python_out=${ARG_PYTHON_OUT}
           --plugin=protoc-gen-grpc_python=${OPTD_GRPC_PYTHON_PLUGIN})
    endif()
    add_custom_command(
      OUTPUT ${py_out}
      COMMAND ${Protobuf_PROTOC_EXECUTABLE} --proto_path=${ARG_IMPORT_DIR} ${py_args} ${proto}
      DEPENDS ${proto}
      COMMENT "protoc (Python) ${rel}")
    add_custom_target(optd_${ARG_NAME}_python ALL DEPENDS ${py_out})
  endif()
endfunction()
