defmodule CoreTest do
  use ExUnit.Case, async: true

  test "hello/0" do
    assert Core.hello() == "hello from core"
  end
end
