// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Phase 4: the code of a valid handler (the `HandlerAbi` impl, one ops table and raw
//! handler per version, the readers of older versions, the trampolines into the luo_abi
//! runtime, the compile-time checks of the linked globals), or on any error the fallback.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, LitStr, Path};

use crate::common::{self, assert_impl};

use super::features::{self, AbiParts};
use super::model::Model;

/// The expansion of a handler whose arguments are valid.
pub fn generate(m: &Model) -> TokenStream {
    let ident = &m.ident;
    let parts = features::parts(m);
    let abi_items = abi_items(m, &parts);
    let inherent = &parts.inherent;

    // One ops table and raw handler per version: index 0 writes, the others read.
    let mut tables = vec![written_table(m)];
    let mut entries = vec![entry(
        &format_ident!("__LUO_OPS_0"),
        &m.compat_value(),
        &m.depends_on,
    )];
    let mut readers = Vec::new();
    for (i, (lit, old)) in m.read_versions().enumerate() {
        let table = format_ident!("__LUO_OPS_{}", i + 1);
        let rd = format_ident!("__LuoRead{}", i + 1);
        tables.push(read_table(m, &table, &rd));
        entries.push(entry(&table, &lit.value(), &m.depends_on));
        readers.push(reader(ident, &rd, lit, old));
    }
    let reader_tramps = reader_trampolines(m);
    let (state_ops_fn, state_items) = state_ops(m);
    let tramps = trampolines(ident);
    let checks = checks(m);
    let uses = uses_impls(m);
    quote! {
        #inherent
        const _: () = {
            use ::luo_generated::liveupdate as __lu;

            // SAFETY: the entries are the generated structs over the ops tables below, whose
            // trampolines call the luo_abi runtime for this type.
            unsafe impl ::luo_abi::handler::HandlerAbi for #ident {
                #abi_items
                fn entries() -> &'static [Self::Raw] {
                    const __LUO_ENTRIES: &[__lu::liveupdate_file_handler] = &[#(#entries),*];
                    __LUO_ENTRIES
                }
                #state_ops_fn
            }
            #uses
            #(#tables)*
            #(#readers)*
            #state_items
            #reader_tramps
            #tramps
            #checks
        };
    }
}

/// `<Handler as FileHandler>::HAS_<CALLBACK>`: whether the impl defines the callback.
fn has(ident: &Ident, callback: &str) -> TokenStream {
    let k = format_ident!("HAS_{}", callback.to_uppercase());
    quote!(<#ident as ::luo_abi::handler::FileHandler>::#k)
}

/// `Some(f)` if the impl defines `callback`, else `None` (evaluated at compile time).
fn opt(ident: &Ident, callback: &str, f: TokenStream) -> TokenStream {
    let h = has(ident, callback);
    quote!(if #h { ::core::option::Option::Some(#f) } else { ::core::option::Option::None })
}

/// The ops table of the version written: every callback the impl defines.
fn written_table(m: &Model) -> TokenStream {
    let ident = &m.ident;
    let reader = quote!(::luo_abi::handler::Current);
    let fields = [
        (
            "can_preserve",
            opt(ident, "can_preserve", quote!(__luo_can_preserve)),
        ),
        ("preserve", opt(ident, "preserve", quote!(__luo_preserve))),
        (
            "unpreserve",
            opt(ident, "unpreserve", quote!(__luo_unpreserve)),
        ),
        ("freeze", opt(ident, "freeze", quote!(__luo_freeze))),
        ("unfreeze", opt(ident, "unfreeze", quote!(__luo_unfreeze))),
        (
            "retrieve",
            opt(ident, "retrieve", quote!(__luo_retrieve::<#reader>)),
        ),
        (
            "can_finish",
            opt(ident, "can_finish", quote!(__luo_can_finish::<#reader>)),
        ),
        (
            "finish",
            opt(ident, "finish", quote!(__luo_finish::<#reader>)),
        ),
        ("get_id", opt(ident, "get_id", quote!(__luo_get_id))),
    ];
    ops_table(&format_ident!("__LUO_OPS_0"), &fields)
}

/// The ops table of an older version read through `rd`: it only retrieves and finishes (a
/// file is never preserved in an old format), so preserving refuses and freezing is absent.
fn read_table(m: &Model, table: &Ident, rd: &Ident) -> TokenStream {
    let ident = &m.ident;
    let some = |f: TokenStream| quote!(::core::option::Option::Some(#f));
    let none = quote!(::core::option::Option::None);
    let fields = [
        ("can_preserve", some(quote!(__luo_reader_can_preserve))),
        ("preserve", some(quote!(__luo_reader_preserve))),
        ("unpreserve", some(quote!(__luo_reader_unpreserve))),
        ("freeze", none.clone()),
        ("unfreeze", none.clone()),
        (
            "retrieve",
            opt(ident, "retrieve", quote!(__luo_retrieve::<#rd>)),
        ),
        (
            "can_finish",
            opt(ident, "can_finish", quote!(__luo_can_finish::<#rd>)),
        ),
        ("finish", opt(ident, "finish", quote!(__luo_finish::<#rd>))),
        ("get_id", none),
    ];
    ops_table(table, &fields)
}

/// The reader `rd` of version `lit`: reads the old record, checks it, migrates it to the
/// current one and decodes that.
fn reader(ident: &Ident, rd: &Ident, lit: &LitStr, old: &Path) -> TokenStream {
    let span = lit.span();
    let validate = common::validate(quote!(old));
    // Spanned at the version string, so a missing `Migrate` impl is reported there.
    let ident = Ident::new(&ident.to_string(), span);
    quote_spanned! {span=>
    #[doc(hidden)]
    pub struct #rd;
    impl ::luo_abi::handler::ReadAs<#ident> for #rd {
        const SIZE: usize = ::core::mem::size_of::<#old>();
        fn read(
            handler: &#ident,
            kho: &dyn ::luo_abi::kho::KhoService,
            data: u64,
        ) -> ::luo_abi::Result<<#ident as ::luo_abi::handler::HandlerAbi>::Read> {
            let old = ::luo_abi::record::read_ser::<#old>(kho, data)?;
            #validate
            let new = <#ident as ::luo_abi::handler::Migrate<#old>>::migrate(handler, old)?;
            <#ident as ::luo_abi::handler::HandlerAbi>::decode(new)
        }
    }
    }
}

/// The callbacks of the older versions' tables that refuse to preserve.
fn reader_trampolines(m: &Model) -> TokenStream {
    if m.read_versions().next().is_none() {
        return quote!();
    }
    quote! {
        unsafe extern "C" fn __luo_reader_can_preserve(
            _handler: *mut __lu::liveupdate_file_handler,
            _file: *mut __lu::file,
        ) -> bool {
            ::luo_abi::handler::rt::reader_can_preserve()
        }
        unsafe extern "C" fn __luo_reader_preserve(_args: *mut __lu::liveupdate_file_op_args) -> ::core::ffi::c_int {
            ::luo_abi::handler::rt::reader_preserve()
        }
        unsafe extern "C" fn __luo_reader_unpreserve(_args: *mut __lu::liveupdate_file_op_args) {
            ::luo_abi::handler::rt::reader_unpreserve()
        }
    }
}

/// `state_ops()` and, with handler-scoped state, its ops table and trampolines.
fn state_ops(m: &Model) -> (TokenStream, TokenStream) {
    let ident = &m.ident;
    match &m.state {
        Some(_) => (
            quote! {
                fn state_ops() -> *const ::core::ffi::c_void {
                    &__LUO_STATE_OPS as *const __lu::liveupdate_fh_global_state_ops as *const ::core::ffi::c_void
                }
            },
            quote! {
                const __LUO_STATE_OPS: __lu::liveupdate_fh_global_state_ops = __lu::liveupdate_fh_global_state_ops {
                    global_state_create: ::core::option::Option::Some(__luo_state_create),
                    global_state_restore: ::core::option::Option::Some(__luo_state_restore),
                    global_state_destroy: ::core::option::Option::Some(__luo_state_destroy),
                };
                unsafe extern "C" fn __luo_state_create(
                    handler: *mut __lu::liveupdate_file_handler,
                    obj: *mut *mut ::core::ffi::c_void,
                    data_handle: *mut u64,
                ) -> ::core::ffi::c_int {
                    // SAFETY: the core passes a handler of this registration and valid out-pointers.
                    unsafe { ::luo_abi::global::rt::state_create::<#ident>(handler.cast(), obj, data_handle) }
                }
                unsafe extern "C" fn __luo_state_restore(
                    handler: *mut __lu::liveupdate_file_handler,
                    data_handle: u64,
                    obj: *mut *mut ::core::ffi::c_void,
                ) -> ::core::ffi::c_int {
                    // SAFETY: as for create.
                    unsafe { ::luo_abi::global::rt::state_restore::<#ident>(handler.cast(), data_handle, obj) }
                }
                unsafe extern "C" fn __luo_state_destroy(
                    handler: *mut __lu::liveupdate_file_handler,
                    obj: *mut ::core::ffi::c_void,
                ) {
                    // SAFETY: as for create.
                    unsafe { ::luo_abi::global::rt::state_destroy::<#ident>(handler.cast(), obj) }
                }
            },
        ),
        None => (
            quote! {
                fn state_ops() -> *const ::core::ffi::c_void {
                    ::core::ptr::null()
                }
            },
            quote!(),
        ),
    }
}

/// The trampolines of the version written: C calls into the luo_abi runtime for this type.
fn trampolines(ident: &Ident) -> TokenStream {
    quote! {
        unsafe extern "C" fn __luo_can_preserve(
            handler: *mut __lu::liveupdate_file_handler,
            file: *mut __lu::file,
        ) -> bool {
            // SAFETY: the core passes a handler of this registration and a live file.
            unsafe { ::luo_abi::handler::rt::can_preserve::<#ident>(handler.cast(), file.cast()) }
        }
        unsafe extern "C" fn __luo_preserve(args: *mut __lu::liveupdate_file_op_args) -> ::core::ffi::c_int {
            // SAFETY: the core passes valid op args for a handler of this registration.
            unsafe {
                let a = &mut *args;
                ::luo_abi::handler::rt::preserve::<#ident>(
                    a.handler.cast(), a.session.cast(), a.file.cast(), &mut a.serialized_data, &mut a.private_data)
            }
        }
        unsafe extern "C" fn __luo_unpreserve(args: *mut __lu::liveupdate_file_op_args) {
            // SAFETY: as for preserve.
            unsafe {
                let a = &mut *args;
                ::luo_abi::handler::rt::unpreserve::<#ident>(
                    a.handler.cast(), a.session.cast(), a.file.cast(), a.serialized_data, &mut a.private_data)
            }
        }
        unsafe extern "C" fn __luo_freeze(args: *mut __lu::liveupdate_file_op_args) -> ::core::ffi::c_int {
            // SAFETY: as for preserve.
            unsafe {
                let a = &mut *args;
                ::luo_abi::handler::rt::freeze::<#ident>(
                    a.handler.cast(), a.session.cast(), a.file.cast(), &mut a.serialized_data, a.private_data)
            }
        }
        unsafe extern "C" fn __luo_unfreeze(args: *mut __lu::liveupdate_file_op_args) {
            // SAFETY: as for preserve.
            unsafe {
                let a = &mut *args;
                ::luo_abi::handler::rt::unfreeze::<#ident>(
                    a.handler.cast(), a.session.cast(), a.file.cast(), a.serialized_data, a.private_data)
            }
        }
        unsafe extern "C" fn __luo_retrieve<V: ::luo_abi::handler::ReadAs<#ident>>(
            args: *mut __lu::liveupdate_file_op_args,
        ) -> ::core::ffi::c_int {
            // SAFETY: as for preserve.
            unsafe {
                let a = &mut *args;
                let mut file = ::core::ptr::null_mut();
                let r = ::luo_abi::handler::rt::retrieve::<#ident, V>(
                    a.handler.cast(), a.session.cast(), a.serialized_data, &mut file);
                if r == 0 {
                    a.file = file.cast();
                }
                r
            }
        }
        unsafe extern "C" fn __luo_can_finish<V: ::luo_abi::handler::ReadAs<#ident>>(
            args: *mut __lu::liveupdate_file_op_args,
        ) -> bool {
            // SAFETY: as for preserve.
            unsafe {
                let a = &*args;
                ::luo_abi::handler::rt::can_finish::<#ident, V>(
                    a.handler.cast(), a.session.cast(), a.file.cast(), a.serialized_data, a.retrieve_status)
            }
        }
        unsafe extern "C" fn __luo_finish<V: ::luo_abi::handler::ReadAs<#ident>>(
            args: *mut __lu::liveupdate_file_op_args,
        ) {
            // SAFETY: as for preserve.
            unsafe {
                let a = &*args;
                ::luo_abi::handler::rt::finish::<#ident, V>(
                    a.handler.cast(), a.session.cast(), a.file.cast(), a.serialized_data, a.retrieve_status)
            }
        }
        unsafe extern "C" fn __luo_get_id(file: *mut __lu::file) -> ::core::ffi::c_ulong {
            // SAFETY: the core passes a live file.
            unsafe { ::luo_abi::handler::rt::get_id::<#ident>(file.cast()) as ::core::ffi::c_ulong }
        }
    }
}

/// `HandlerAbi::Globals`: the state's cell, then each FLB's and subsystem's.
fn globals_type(m: &Model) -> TokenStream {
    let mut tys = Vec::new();
    // Spanned at the user's path, so a type that is not the declared form is reported there.
    if let Some(s) = &m.state {
        tys.push(quote_spanned!(s.span()=> ::luo_abi::global::HandlerStateCell<#s>));
    }
    for f in &m.flbs {
        tys.push(
            quote_spanned!(f.span()=> ::luo_abi::__private::Arc<::luo_abi::global::FlbCell<#f>>),
        );
    }
    for s in &m.subsystems {
        tys.push(quote_spanned!(s.span()=> ::luo_abi::__private::Arc<::luo_abi::global::SubsystemCell<#s>>));
    }
    match tys.len() {
        0 => quote!(()),
        _ => quote!((#(#tys,)*)),
    }
}

/// The `HandlerAbi` items that do not depend on the ops tables.
fn abi_items(m: &Model, parts: &AbiParts) -> TokenStream {
    let AbiParts {
        read_ty,
        decode,
        encode,
        active_of,
        features,
        ..
    } = parts;
    let abi = m.abi.as_ref().map_or(quote!(()), |a| quote!(#a));
    let compat = m.compat_value();
    let reads: Vec<String> = m.read_versions().map(|(l, _)| l.value()).collect();
    let state_ty = match &m.state {
        Some(s) => quote!(#s),
        None => quote!(::luo_abi::global::NoState),
    };
    let globals = globals_type(m);
    let state_fn = match &m.state {
        Some(_) => quote!(::core::option::Option::Some(&globals.0)),
        None => quote!({
            let _ = globals;
            ::core::option::Option::None
        }),
    };
    let base = m.globals_base();
    let flb_raws = (0..m.flbs.len()).map(|i| {
        let idx = syn::Index::from(base + i);
        quote!(globals.#idx.raw())
    });
    quote! {
        type Ser = #abi;
        type Read = #read_ty;
        type State = #state_ty;
        type Globals = #globals;
        type Raw = ::luo_generated::liveupdate::liveupdate_file_handler;
        const COMPATIBLE: &'static str = #compat;
        const READS: &'static [&'static str] = &[#(#reads),*];
        const FEATURES: ::core::option::Option<::luo_abi::features::FeatureDecl> = #features;
        fn decode(ser: Self::Ser) -> ::luo_abi::Result<Self::Read> {
            #decode
        }
        fn encode(ser: &mut Self::Ser, active: u64) {
            #encode
        }
        fn active_of(ser: &Self::Ser) -> u64 {
            #active_of
        }
        fn state(globals: &Self::Globals) -> ::core::option::Option<&::luo_abi::global::HandlerStateCell<Self::State>> {
            #state_fn
        }
        fn flbs(globals: &Self::Globals) -> ::luo_abi::__private::Vec<::luo_abi::host::RawFlb> {
            let _ = globals;
            ::luo_abi::__private::vec![#(#flb_raws),*]
        }
    }
}

/// A `liveupdate_file_ops` table.
fn ops_table(name: &Ident, fields: &[(&str, TokenStream)]) -> TokenStream {
    let f = fields.iter().map(|(k, v)| {
        let k = format_ident!("{}", k);
        quote!(#k: #v,)
    });
    quote! {
        const #name: __lu::liveupdate_file_ops = __lu::liveupdate_file_ops {
            #(#f)*
            owner: ::core::ptr::null_mut(),
        };
    }
}

/// A `liveupdate_file_handler` over `table`, registered as `compat`.
fn entry(table: &Ident, compat: &str, depends_on: &[LitStr]) -> TokenStream {
    // `depends_on` is a NULL-terminated array of NUL-terminated compatible strings.
    let deps = if depends_on.is_empty() {
        quote!(::core::ptr::null())
    } else {
        let strs = depends_on.iter().map(|d| {
            let bytes = syn::LitByteStr::new(format!("{}\0", d.value()).as_bytes(), d.span());
            quote!(#bytes.as_ptr())
        });
        quote!([#(#strs,)* ::core::ptr::null()].as_ptr())
    };
    quote! {
        __lu::liveupdate_file_handler {
            ops: &#table,
            compatible: ::luo_abi::abi::compat_bytes(#compat),
            depends_on: #deps,
        }
    }
}

/// `Uses<G>` for each linked FLB and subsystem: where its cell is in the globals tuple.
fn uses_impls(m: &Model) -> TokenStream {
    let ident = &m.ident;
    let base = m.globals_base();
    let all = m.flbs.iter().chain(&m.subsystems);
    let impls = all.enumerate().map(|(i, p)| {
        let idx = syn::Index::from(base + i);
        quote_spanned! {p.span()=>
            // SAFETY: the cell is the declared one, in the globals tuple.
            unsafe impl ::luo_abi::handler::Uses<#p> for #ident {
                fn global(globals: &Self::Globals) -> &<#p as ::luo_abi::global::Global>::Cell {
                    &globals.#idx
                }
            }
        }
    });
    quote!(#(#impls)*)
}

/// Compile-time checks spanned at the user's tokens.
fn checks(m: &Model) -> TokenStream {
    let mut out = Vec::new();
    if let Some(s) = &m.state {
        out.push(assert_impl(s, quote!(::luo_abi::global::DeclaredState)));
    }
    for f in &m.flbs {
        out.push(assert_impl(f, quote!(::luo_abi::global::FlbState)));
    }
    for s in &m.subsystems {
        out.push(assert_impl(s, quote!(::luo_abi::global::Subsystem)));
    }
    quote!(#(#out)*)
}

/// On errors: the `HandlerAbi` impl with the types that could be parsed and no ops tables,
/// so the impl block and the handler's own code do not produce follow-on errors.
pub fn fallback(m: &Model) -> TokenStream {
    if m.abi.is_none() {
        return quote!();
    }
    let ident = &m.ident;
    let parts = features::fallback_parts(m);
    let abi_items = abi_items(m, &parts);
    let inherent = &parts.inherent;
    let uses = uses_impls(m);
    quote! {
        #inherent
        const _: () = {
            // SAFETY: never registered: the crate does not compile.
            unsafe impl ::luo_abi::handler::HandlerAbi for #ident {
                #abi_items
                fn entries() -> &'static [Self::Raw] {
                    &[]
                }
                fn state_ops() -> *const ::core::ffi::c_void {
                    ::core::ptr::null()
                }
            }
            #uses
        };
    }
}
