"""plc: the Modbus TCP server the line's PLC talks to — register map, line state, commands."""
