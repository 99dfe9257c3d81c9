# optd_cc_library(NAME <name> SRCS ... DEPS ...): library optd_<name>, aliased optd::<name>.
# optd_cc_test(NAME <name> SRCS ... DEPS ... [LABELS ...]): a gtest binary registered with ctest.
include(GoogleTest)
get_filename_component(OPTD_SOURCE_ROOT "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)

function(optd_cc_library)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;DEPS" ${ARGN})
  add_library(optd_${ARG_NAME} STATIC ${ARG_SRCS})
  add_library(optd::${ARG_NAME} ALIAS optd_${ARG_NAME})
  target_include_directories(optd_${ARG_NAME} PUBLIC ${OPTD_SOURCE_ROOT})
  target_link_libraries(optd_${ARG_NAME} PUBLIC ${ARG_DEPS})
endfunction()

function(optd_cc_test)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;DEPS;LABELS" ${ARGN})
  if(NOT OPTD_BUILD_TESTS OR OPTD_SKIP_TEST_${ARG_NAME})
    return()
  endif()
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} GTest::gmock GTest::gtest_main)
  # One ctest entry per binary (not per TEST): keeps process start-up cost low on 2 cores.
  add_test(NAME ${ARG_NAME} COMMAND ${ARG_NAME})
  set_tests_properties(${ARG_NAME} PROPERTIES LABELS "unit;${ARG_LABELS}" TIMEOUT 600)
endfunction()
